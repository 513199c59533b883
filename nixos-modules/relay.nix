{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.fleet.relay;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "fleet-relay.toml" cfg.settings;

  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optional
    types
    ;
  packageOption = import ./package-option.nix { inherit lib pkgs; };

  stateDirectory = "/var/lib/${cfg.stateDir}";
  # With DynamicUser the key file is handed over by systemd (LoadCredential), readable
  # only by the service, under $CREDENTIALS_DIRECTORY = /run/credentials/UNIT.
  credentialKey = "/run/credentials/fleet-relay.service/node.key";
  generatedKey = "${stateDirectory}/node.key";

  # IPv6 addresses are written [ADDR]:PORT.
  hostPort = host: port: if lib.hasInfix ":" host then "[${host}]:${toString port}" else "${host}:${toString port}";

  hardening = import ./hardening.nix { inherit lib; };
  lowPort = cfg.port < 1024 || (cfg.stunPort != null && cfg.stunPort < 1024);

  keygen = pkgs.writeShellScript "fleet-relay-keygen" ''
    set -eu
    if [ ! -e ${lib.escapeShellArg generatedKey} ]; then
      ${lib.getExe' cfg.package "fleet"} keygen ${lib.escapeShellArg generatedKey}
    fi
  '';
in
{
  options.services.fleet.relay = {
    enable = mkEnableOption "a fleet relay, which forwards encrypted packets between fleet nodes that cannot reach each other directly";

    package = packageOption "relay";

    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      example = "::";
      description = ''
        Address the relay listens on (TCP, TLS), and answers STUN on (UDP
        {option}`services.fleet.relay.stunPort`).
      '';
    };

    port = mkOption {
      type = types.port;
      default = 4433;
      example = 443;
      description = ''
        TCP port of the relay. Port 443 passes most restrictive firewalls; the service is
        then given `CAP_NET_BIND_SERVICE` and nothing else.
      '';
    };

    stunPort = mkOption {
      type = types.nullOr types.port;
      default = 3478;
      example = null;
      description = ''
        UDP port on which the relay answers STUN binding requests. Nodes ask the relays they
        know on port 3478 for their public address, and hole punching through NAT needs that
        answer: without it every node behind NAT stays on the relay path. `null` turns STUN
        off (`fleet relay --no-stun`).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to open {option}`services.fleet.relay.port` (TCP) and, unless it is `null`,
        {option}`services.fleet.relay.stunPort` (UDP) in the firewall.
      '';
    };

    keyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/fleet-relay.key";
      description = ''
        Absolute path of the relay's private key (`fleet keygen`). It is passed to the
        service with systemd's `LoadCredential`, so it may be readable by root only.
        When `null`, a key is generated on first start in
        `/var/lib/''${services.fleet.relay.stateDir}/node.key` and kept there. The relay's
        node id is part of its URL (`fleet-relay://NODEID@HOST:PORT`) that every node pins:
        keep the key across reinstalls.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "fleet-relay";
      description = ''
        Directory below `/var/lib` for the relay's generated key. It is created by systemd's
        `StateDirectory` mechanism, owned by the service's dynamic user.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = literalExpression ''
        {
          max_clients = 20000;
          metrics_listen = "127.0.0.1:9430";
        }
      '';
      description = ''
        Settings of `fleet relay`, written as TOML and passed with `--config`. Keys are the
        command-line flags without the leading dashes (`max_clients` or `max-clients`); see
        `fleet relay --help`. The options above set `listen`, `key` and `stun_listen` (or
        `stun = false`) here.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.keyFile == null || lib.hasPrefix "/" cfg.keyFile;
        message = "services.fleet.relay.keyFile must be an absolute path, not ${toString cfg.keyFile}.";
      }
      {
        assertion =
          cfg.stateDir != ""
          && !lib.hasPrefix "/" cfg.stateDir
          && !lib.elem ".." (lib.splitString "/" cfg.stateDir);
        message = ''
          services.fleet.relay.stateDir must be a relative directory name below /var/lib
          (such as "fleet-relay"), not "${cfg.stateDir}".
        '';
      }
      {
        assertion = !(cfg.settings.insecure_no_tls or false);
        message = "services.fleet.relay: insecure_no_tls is for loopback tests only; remove it from settings.";
      }
    ];

    services.fleet.relay.settings = lib.mapAttrs (_: lib.mkDefault) (
      {
        listen = hostPort cfg.listenAddress cfg.port;
        key = if cfg.keyFile == null then generatedKey else credentialKey;
      }
      // (
        if cfg.stunPort == null then
          { stun = false; }
        else
          { stun_listen = hostPort cfg.listenAddress cfg.stunPort; }
      )
    );

    # `fleet id` (the node id in the relay's URL) and `fleet keygen` on the host.
    environment.systemPackages = [ cfg.package ];

    networking.firewall = mkIf cfg.openFirewall {
      allowedTCPPorts = [ cfg.port ];
      allowedUDPPorts = optional (cfg.stunPort != null) cfg.stunPort;
    };

    systemd.services.fleet-relay = {
      description = "fleet relay";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      serviceConfig = hardening {
        inherit lowPort;
        inherit (cfg) stateDir keyFile;
      } // {
        ExecStartPre = optional (cfg.keyFile == null) keygen;
        ExecStart = "${lib.getExe' cfg.package "fleet"} relay --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 5;
        # Exit 78 (EX_CONFIG): a setting is wrong; restarting cannot fix it (docs/operations.md).
        RestartPreventExitStatus = 78;
        # One file descriptor per client connection (max_clients defaults to 10000).
        LimitNOFILE = 65536;
      };
    };
  };

  meta.maintainers = [ ];
}
