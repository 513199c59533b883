{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.fleet.agent;
  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "fleet-agent.toml" cfg.settings;

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

  stateDirectory = "fleet-agent";
  defaultKeyFile = "/etc/ssh/ssh_host_ed25519_key";

  # `fleet agent --coordinator` takes NODEID, NODEID@HOST:PORT or NODEID@H1:P1@H2:P2.
  coordinatorAddr = lib.concatStringsSep "@" ([ cfg.coordinator.nodeId ] ++ cfg.coordinator.addresses);
in
{
  options.services.fleet.agent = {
    enable = mkEnableOption "the fleet agent, which applies admin-signed NixOS systems pushed through a fleet coordinator";

    package = packageOption "agent";

    coordinator = {
      nodeId = mkOption {
        type = types.nullOr fleetTypes.nodeId;
        default = null;
        example = "<COORDINATOR-ID>";
        description = ''
          Node id of the coordinator (what `fleet id` prints for its key).
          It is what the agent authenticates: the coordinator's TLS certificate must carry
          this key.
        '';
      };

      addresses = mkOption {
        type = types.listOf fleetTypes.hostPort;
        default = [ ];
        example = [
          "203.0.113.10:7443"
          "[2001:db8::10]:7443"
        ];
        description = ''
          `HOST:PORT` addresses (UDP) where the coordinator may be reached directly. They are
          hints only; the node id is authenticated. Leave empty to reach the coordinator only
          through {option}`services.fleet.agent.relays`.
        '';
      };
    };

    relays = mkOption {
      type = types.listOf fleetTypes.relayUrl;
      default = [ ];
      example = [ "fleet-relay://<RELAY-ID>@relay.example.org:4433" ];
      description = ''
        Relay URLs (`fleet-relay://NODEID@HOST:PORT`). The relay carries traffic when no
        direct UDP path to the coordinator works, for example behind carrier-grade NAT or
        where UDP is blocked.
      '';
    };

    keyFile = mkOption {
      type = types.str;
      default = defaultKeyFile;
      example = "/var/lib/fleet-agent/node.key";
      description = ''
        Absolute path of the device's private key: a fleet key file (`fleet keygen`) or an
        unencrypted OpenSSH ed25519 private key. The default reuses the SSH host key, so the
        device's fleet node id is stable across reinstalls that keep the host key. Given as
        a string so that the key is read at run time and never copied into the Nix store.
      '';
    };

    enrollTokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/fleet-enroll-token";
      description = ''
        An enrollment token file (`fleetctl enroll-token create`): on its first connection
        the device presents it and the coordinator registers and approves it with the
        token's tags, so no admin has to add it. The token is a bearer credential: give the
        path as a string to a file provisioned outside the Nix store (agenix, sops-nix, a
        provisioning step), mode 0600; the agent refuses a file others can read.
      '';
    };

    trustRoots = mkOption {
      type = types.listOf fleetTypes.nodeId;
      default = [ ];
      example = [ "<TRUST-ROOT-ID>" ];
      description = ''
        Node ids of the organization's trust roots (`fleetctl org init`). The agent accepts
        an announcement only if its signer's capability chain leads from one of these roots,
        grants `push` and covers this device; it checks this itself, so a coordinator cannot
        make the device install a system that no authorized admin signed for it.
      '';
    };

    tags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "prod" "kiosk" ];
      description = ''
        Tags of this device, for certificates scoped to `tag:NAME`. They come from this
        configuration only, never from the coordinator, so a coordinator cannot move the
        device into another admin's scope.
      '';
    };

    substituters = mkOption {
      type = types.listOf fleetTypes.substituterUrl;
      default = config.nix.settings.substituters;
      defaultText = literalExpression "config.nix.settings.substituters";
      example = [ "https://cache.example.org" ];
      description = ''
        Binary caches the agent fetches announced systems from. Only these are used: the
        cache hints in an announcement are ignored, so neither a coordinator nor an admin can
        point the device at another cache.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf fleetTypes.nixPublicKey;
      default = config.nix.settings.trusted-public-keys;
      defaultText = literalExpression "config.nix.settings.trusted-public-keys";
      example = [ "cache.example.org-1:<BASE64>" ];
      description = ''
        Nix signing keys (`NAME:BASE64`) that the fetched store paths must be signed with.
        The key your CI signs system closures with must be in this list.
      '';
    };

    welcomeTimeout = mkOption {
      type = fleetTypes.positiveSeconds;
      default = 30;
      description = ''
        Seconds the agent waits for the coordinator's Welcome after its Hello before it gives
        up on that connection. A coordinator too busy to answer in time says so (Busy, with a
        retry-after the agent honours), so this rarely needs raising.
      '';
    };

    reconnectSpread = mkOption {
      type = fleetTypes.seconds;
      default = 10;
      description = ''
        After a session with the coordinator ends (for example when it restarts), the first
        redial waits a random time between 0 and this many seconds, so that a whole fleet does
        not redial at the same moment.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = literalExpression ''
        {
          listen = "0.0.0.0:41641";
          log_level = "debug";
        }
      '';
      description = ''
        Settings of `fleet agent`, written as TOML and passed with `--config`. Keys are the
        command-line flags without the leading dashes (`log_level` or `log-level`); see
        `fleet agent --help`. The options above set `coordinator`, `relay`, `key`, `trust_root`, `tag`,
        `substituter`, `trusted_public_key`, `state_dir`, `welcome_timeout` and
        `reconnect_spread` here.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.settings ? coordinator;
        message = ''
          services.fleet.agent.coordinator.nodeId must be set: the node id of your coordinator,
          as printed by `fleet id KEYFILE` for its key (with the fleet coordinator module:
          `sudo fleet id /var/lib/fleet-coordinator/node.key` on the coordinator host).
        '';
      }
      {
        assertion =
          !(cfg.settings ? coordinator)
          || lib.hasInfix "@" cfg.settings.coordinator
          || (cfg.settings.relay or [ ]) != [ ];
        message = ''
          services.fleet.agent cannot reach its coordinator: set
          services.fleet.agent.coordinator.addresses (e.g. [ "203.0.113.10:7443" ]),
          services.fleet.agent.relays (e.g. [ "fleet-relay://NODEID@relay.example.org:4433" ]),
          or both.
        '';
      }
      {
        assertion = (cfg.settings.trust_root or [ ]) != [ ];
        message = ''
          services.fleet.agent.trustRoots is empty, so the agent would refuse every update: list
          the node ids of your organization's trust roots (printed by `fleetctl org init`).
        '';
      }
      {
        assertion = (cfg.settings.substituter or [ ]) != [ ];
        message = ''
          services.fleet.agent.substituters is empty: the agent fetches systems only from the
          binary caches configured here (it defaults to nix.settings.substituters).
        '';
      }
      {
        assertion = (cfg.settings.trusted_public_key or [ ]) != [ ];
        message = ''
          services.fleet.agent.trustedPublicKeys is empty: the agent only installs store paths
          signed by a key listed here (it defaults to nix.settings.trusted-public-keys); add
          the public key your CI signs system closures with.
        '';
      }
      {
        assertion = lib.hasPrefix "/" cfg.keyFile;
        message = "services.fleet.agent.keyFile must be an absolute path, not ${cfg.keyFile}.";
      }
      {
        assertion =
          cfg.enrollTokenFile == null
          || !lib.hasPrefix builtins.storeDir (toString cfg.enrollTokenFile);
        message = "services.fleet.agent.enrollTokenFile is in the Nix store, readable by every user; the token is a bearer credential: give the path of a file provisioned outside the store (as a string).";
      }
    ];

    warnings =
      optional (cfg.keyFile == defaultKeyFile && !config.services.openssh.enable)
        "services.fleet.agent.keyFile is the SSH host key ${defaultKeyFile}, but services.openssh is disabled, so nothing creates that key; create it (ssh-keygen -t ed25519 -N \"\" -f ${defaultKeyFile}) or set keyFile to a key made with `fleet keygen`.";

    services.fleet.agent.settings = lib.mapAttrs (_: lib.mkDefault) (
      {
        key = cfg.keyFile;
        relay = cfg.relays;
        trust_root = cfg.trustRoots;
        tag = cfg.tags;
        substituter = cfg.substituters;
        trusted_public_key = cfg.trustedPublicKeys;
        state_dir = "/var/lib/${stateDirectory}";
        welcome_timeout = cfg.welcomeTimeout;
        reconnect_spread = cfg.reconnectSpread;
      }
      // lib.optionalAttrs (cfg.coordinator.nodeId != null) { coordinator = coordinatorAddr; }
      // lib.optionalAttrs (cfg.enrollTokenFile != null) {
        enroll_token = toString cfg.enrollTokenFile;
      }
    );

    environment.systemPackages = [ cfg.package ];

    systemd.services.fleet-agent = {
      description = "fleet agent: applies admin-signed NixOS systems";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      # The default key is the SSH host key, which sshd's start-up creates on first boot.
      after = [ "network-online.target" ] ++ optional config.services.openssh.enable "sshd.service";

      # The agent runs switch-to-configuration itself: restarting it from inside a switch
      # would kill the activation it is supervising. A new agent version takes effect at the
      # next boot or `systemctl restart fleet-agent`.
      restartIfChanged = false;

      # nix-store / nix-env for fetching and profiles; switch-to-configuration brings its own.
      path = [
        config.nix.package
        pkgs.coreutils
      ];

      serviceConfig = {
        ExecStart = "${lib.getExe' cfg.package "fleet"} agent --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 5;
        # Exit 78 (EX_CONFIG): a setting is wrong; restarting cannot fix it (docs/operations.md).
        RestartPreventExitStatus = 78;
        # Root is needed: the agent writes the Nix store, sets the system profile and
        # activates systems, so the usual sandboxing (ProtectSystem, PrivateDevices, ...)
        # would leak into every activation it runs and is deliberately not set.
        User = "root";
        StateDirectory = stateDirectory;
        StateDirectoryMode = "0700";
        UMask = "0077";
        # SIGTERM goes to the agent alone: it finishes an activation in progress (and its
        # switch-to-configuration child) before it exits; only after the timeout is the
        # whole group killed.
        KillMode = "mixed";
        TimeoutStopSec = "15min";
      };
    };
  };

  meta.maintainers = [ ];
}
