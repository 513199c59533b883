{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.fleet.coordinator;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "fleet-coordinator.toml" cfg.settings;

  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optional
    types
    ;
  fleetTypes = import ./types.nix { inherit lib; };
  packageOption = import ./package-option.nix { inherit lib pkgs; };

  stateDirectory = "/var/lib/${cfg.stateDir}";
  # With DynamicUser the key file is handed over by systemd (LoadCredential), readable
  # only by the service, under $CREDENTIALS_DIRECTORY = /run/credentials/UNIT.
  credentialKey = "/run/credentials/fleet-coordinator.service/node.key";
  generatedKey = "${stateDirectory}/node.key";

  # IPv6 addresses are written [ADDR]:PORT.
  hostPort = host: port: if lib.hasInfix ":" host then "[${host}]:${toString port}" else "${host}:${toString port}";

  hardening = import ./hardening.nix { inherit lib; };
  lowPort = cfg.port < 1024;

  keygen = pkgs.writeShellScript "fleet-coordinator-keygen" ''
    set -eu
    if [ ! -e ${lib.escapeShellArg generatedKey} ]; then
      ${lib.getExe' cfg.package "fleet"} keygen ${lib.escapeShellArg generatedKey}
    fi
  '';
in
{
  options.services.fleet.coordinator = {
    enable = mkEnableOption "the fleet coordinator, which keeps the device registry and hands admin-signed pushes to agents";

    package = packageOption "coordinator";

    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      example = "::";
      description = ''
        IP address the coordinator's mesh endpoint binds (UDP). Use `::` for IPv6.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 7443;
      description = ''
        UDP port of the coordinator's mesh endpoint (QUIC). Agents and `fleetctl` connect
        here (`NODEID@HOST:PORT`).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to open {option}`services.fleet.coordinator.port` (UDP) in the firewall.
      '';
    };

    keyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/fleet-coordinator.key";
      description = ''
        Absolute path of the coordinator's private key (`fleet keygen`). It is passed to the
        service with systemd's `LoadCredential`, so it may be readable by root only.
        When `null`, a key is generated on first start in
        `/var/lib/''${services.fleet.coordinator.stateDir}/node.key` and kept there; its node
        id (`sudo fleet id /var/lib/fleet-coordinator/node.key`) is what agents and admins
        pin, so back that directory up.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "fleet-coordinator";
      description = ''
        Directory below `/var/lib` holding the coordinator's database (and generated key).
        It is created by systemd's `StateDirectory` mechanism, owned by the service's
        dynamic user.
      '';
    };

    relays = mkOption {
      type = types.listOf fleetTypes.relayUrl;
      default = [ ];
      example = [ "fleet-relay://<RELAY-ID>@relay.example.org:4433" ];
      description = ''
        Relay URLs (`fleet-relay://NODEID@HOST:PORT`) the coordinator keeps a connection to,
        so that agents and admins that cannot reach it over UDP reach it through a relay.
      '';
    };

    trustRoots = mkOption {
      type = types.listOf fleetTypes.nodeId;
      default = [ ];
      example = [ "<TRUST-ROOT-ID>" ];
      description = ''
        Node ids of the organization's trust roots (`fleetctl org init`). Admin and CI keys
        act with capability certificates issued from these roots (`fleetctl grant`).
      '';
    };

    maxConnections = mkOption {
      type = types.ints.positive;
      default = 12288;
      example = 30000;
      description = ''
        Mesh connections (established or in their handshake) the coordinator holds for agents
        and unknown nodes; new ones beyond it are refused, counted and logged
        (`mesh_admission_refused`). Admins known to the coordinator have a small reserve
        beyond it, so `fleetctl` still gets in. The default fits 10,000 agents with headroom.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = literalExpression ''
        {
          log_level = "debug";
        }
      '';
      description = ''
        Settings of `fleet coordinator`, written as TOML and passed with `--config`. Keys are
        the command-line flags without the leading dashes (`log_level` or `log-level`); see
        `fleet coordinator --help`. The options above set `listen`, `key`, `state_dir`,
        `relay`, `trust_root` and `max_connections` here.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = (cfg.settings.trust_root or [ ]) != [ ];
        message = ''
          services.fleet.coordinator.trustRoots is empty, so nobody could push or manage
          devices: list the node ids of your organization's trust roots (`fleetctl org init`).
        '';
      }
      {
        assertion = cfg.keyFile == null || lib.hasPrefix "/" cfg.keyFile;
        message = "services.fleet.coordinator.keyFile must be an absolute path, not ${toString cfg.keyFile}.";
      }
      {
        assertion =
          cfg.stateDir != ""
          && !lib.hasPrefix "/" cfg.stateDir
          && !lib.elem ".." (lib.splitString "/" cfg.stateDir);
        message = ''
          services.fleet.coordinator.stateDir must be a relative directory name below /var/lib
          (such as "fleet-coordinator"), not "${cfg.stateDir}".
        '';
      }
    ];

    services.fleet.coordinator.settings = lib.mapAttrs (_: lib.mkDefault) {
      listen = hostPort cfg.listenAddress cfg.port;
      key = if cfg.keyFile == null then generatedKey else credentialKey;
      state_dir = stateDirectory;
      relay = cfg.relays;
      trust_root = cfg.trustRoots;
      max_connections = cfg.maxConnections;
    };

    networking.firewall.allowedUDPPorts = optional cfg.openFirewall cfg.port;

    # `fleet id` (the node id agents and admins pin) and `fleet keygen` on the host.
    environment.systemPackages = [ cfg.package ];

    systemd.services.fleet-coordinator = {
      description = "fleet coordinator";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      serviceConfig = hardening {
        inherit lowPort;
        inherit (cfg) stateDir keyFile;
      } // {
        ExecStartPre = optional (cfg.keyFile == null) keygen;
        ExecStart = "${lib.getExe' cfg.package "fleet"} coordinator --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 5;
        # Exit 78 (EX_CONFIG): a setting is wrong; restarting cannot fix it (docs/operations.md).
        RestartPreventExitStatus = 78;
      };
    };
  };

  meta.maintainers = [ ];
}
