# Evaluate one fleet NixOS module with nixpkgs' real module system (lib.evalModules), without
# nixpkgs' packages or NixOS (the test machines have neither).
#
# nixpkgs' lib (tests/vendor/nixpkgs-lib, or FLEET_NIXPKGS_LIB) provides evalModules, the option types
# and the priorities (mkDefault, mkIf), so option types, defaults, assertions and the merge of
# generated and user settings behave as in `nixos-rebuild`. What NixOS would provide is
# declared here as plain options (assertions, warnings, systemd.services, the firewall ports,
# environment.systemPackages, nix.settings, ...), and `pkgs` holds stand-in derivations.
#
# nix-instantiate --eval --strict --json tests/integration/nixos_eval.nix \
#   --arg nixpkgsLib ./tests/vendor/nixpkgs-lib --arg modulePath ./nixos-modules/agent.nix \
#   --argstr role agent --argstr userJson '{...}'
# userJson: {"options": {...}, "settings": {...}, "openssh": bool,
#            "package": "overlay" | "option" | "none"}
#   package: where services.fleet.ROLE.package comes from: the flake's overlay
#   (pkgs.nixos-fleet exists), the option set by the user (as the flake's modules do), or
#   neither (the modules imported alone, with nixpkgs' fleetdm `fleet` in pkgs).
{
  nixpkgsLib,
  modulePath,
  role,
  userJson,
}:

let
  lib = import nixpkgsLib;
  inherit (lib) mkOption types;

  user = builtins.fromJSON userJson;
  packageFrom = user.package or "overlay";

  store = name: "/nix/store/00000000000000000000000000000000-${name}";
  derivation = name: {
    type = "derivation";
    inherit name;
    outPath = store name;
    outputs = [ "out" ];
    meta = { };
  };

  # The JSON-like value type of nixpkgs' pkgs.formats.toml.
  tomlValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf tomlValue)
        (types.listOf tomlValue)
      ]
    )
    // {
      description = "TOML value";
    };

  pkgs =
    {
      # nixpkgs' own `fleet` and `fleetctl` are fleetdm's: a default must never pick them.
      fleet = derivation "fleet-4.60.0-fleetdm";
      fleetctl = derivation "fleetctl-4.60.0-fleetdm";
      coreutils = derivation "coreutils";
      formats.toml = _: {
        type = tomlValue;
        generate = name: _value: store name;
      };
      writeShellScript = name: _text: store name;
    }
    // lib.optionalAttrs (packageFrom == "overlay") {
      nixos-fleet = derivation "nixos-fleet-0.1.0";
    };

  # The NixOS options the fleet modules read or write.
  nixos = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      meta.maintainers = mkOption {
        type = types.listOf types.raw;
        default = [ ];
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      networking.firewall.allowedUDPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
      services.openssh.enable = mkOption {
        type = types.bool;
        default = false;
      };
      nix.package = mkOption { type = types.package; };
      nix.settings = mkOption { type = types.attrsOf types.anything; };
    };
    config = {
      nix.package = derivation "nix";
      nix.settings = {
        substituters = [ "https://cache.nixos.org/" ];
        trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      };
    };
  };

  userModule = {
    services.fleet.${role} = {
      settings = user.settings or { };
    }
    // (user.options or { })
    // lib.optionalAttrs (packageFrom == "option") {
      package = derivation "nixos-fleet-from-option";
    };
    services.openssh.enable = user.openssh or true;
  };

  evaluated = lib.evalModules {
    modules = [
      nixos
      modulePath
      userModule
    ];
    specialArgs = { inherit pkgs; };
  };
  inherit (evaluated) config;
  cfg = config.services.fleet.${role};

  # Options (paths) that lack a type or a description.
  undocumented =
    prefix: opts:
    lib.concatLists (
      lib.mapAttrsToList (
        name: opt:
        if lib.isOption opt then
          lib.optional (
            opt.type.name == "unspecified" || (opt.description or "") == ""
          ) "${prefix}.${name}"
        else
          undocumented "${prefix}.${name}" opt
      ) opts
    );
in
{
  settings = cfg.settings;
  # Forced only when enabled, as NixOS does (documentation uses defaultText).
  package = if cfg.enable then "${cfg.package}" else null;
  systemPackages = map toString config.environment.systemPackages;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  firewall = config.networking.firewall;
  service = config.systemd.services."fleet-${role}" or null;
  undocumentedOptions = undocumented "services.fleet.${role}" evaluated.options.services.fleet.${role};
}
