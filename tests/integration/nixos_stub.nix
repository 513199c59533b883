# Evaluate one fleet NixOS module without nixpkgs (there is none on the test machines).
#
# A stand-in for the few nixpkgs `lib` functions the modules use, a stand-in `pkgs`, and a
# `config` that is the user's option values over the options' own defaults, with the
# module's generated `settings` merged under the user's (as mkDefault would). It is not the
# NixOS module system: it evaluates the modules' own mapping code (options -> TOML settings,
# assertions, systemd unit) so that tests can check it against the real CLI.
#
# nix-instantiate --eval --strict --json tests/integration/nixos_stub.nix \
#   --arg modulePath ./nixos-modules/agent.nix --argstr role agent --argstr userJson '{...}'
# userJson: {"options": {...}, "settings": {...}, "openssh": bool}
{
  modulePath,
  role,
  userJson,
}:

let
  user = builtins.fromJSON userJson;
  userOptions = user.options or { };
  userSettings = user.settings or { };

  store = name: "/nix/store/00000000000000000000000000000000-${name}";

  isOption = x: builtins.isAttrs x && x ? _isOption;

  # Does `content` contain `infix`? (no regex, so any characters work)
  hasInfix =
    infix: content:
    let
      n = builtins.stringLength infix;
      last = builtins.stringLength content - n;
      go = i: i <= last && (builtins.substring i n content == infix || go (i + 1));
    in
    go 0;

  splitString =
    sep: s:
    let
      n = builtins.stringLength sep;
      len = builtins.stringLength s;
      go =
        start: i:
        if i > len - n then
          [ (builtins.substring start (len - start) s) ]
        else if builtins.substring i n s == sep then
          [ (builtins.substring start (i - start) s) ] ++ go (i + n) (i + n)
        else
          go start (i + 1);
    in
    go 0 0;

  lib = rec {
    mkOption = attrs: attrs // { _isOption = true; };
    mkEnableOption =
      name:
      mkOption {
        type = types.bool;
        default = false;
        description = "Whether to enable ${name}.";
      };
    mkPackageOption =
      pkgs: name: _:
      mkOption {
        type = types.package;
        default = pkgs.${name};
        description = "The ${name} package to use.";
      };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    types = {
      str.name = "str";
      bool.name = "bool";
      port.name = "port";
      package.name = "package";
      nullOr = elem: {
        name = "nullOr";
        inherit elem;
      };
      listOf = elem: {
        name = "listOf";
        inherit elem;
      };
      submodule = _: { name = "submodule"; };
    };
    mkIf = cond: content: if cond then content else { };
    mkDefault = x: x;
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    inherit (builtins) mapAttrs concatStringsSep elem;
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
    inherit hasInfix splitString;
    escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
    getExe' = pkg: exe: "${pkg}/bin/${exe}";
  };

  pkgs = {
    fleet = store "fleet-0.1.0";
    coreutils = store "coreutils";
    formats.toml = _: {
      type.name = "toml";
      generate = name: _value: store name;
    };
    writeShellScript = name: _text: store name;
  };

  evaluated = import modulePath { inherit lib pkgs config; };
  options = evaluated.options.services.fleet.${role};
  generated = evaluated.config;

  # The user's value where given, else the option's default.
  withDefaults =
    opts: values:
    builtins.mapAttrs (
      name: opt:
      if isOption opt then
        (if values ? ${name} then values.${name} else opt.default or null)
      else
        withDefaults opt (values.${name} or { })
    ) opts;

  cfg = withDefaults options userOptions // {
    settings = (generated.services.fleet.${role}.settings or { }) // userSettings;
  };

  config = {
    services.fleet.${role} = cfg;
    services.openssh.enable = user.openssh or true;
    nix.package = store "nix";
    nix.settings = {
      substituters = [ "https://cache.nixos.org/" ];
      trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
    };
  };

  # Options (paths) that lack a type or a description.
  undocumented =
    prefix: opts:
    builtins.concatLists (
      builtins.attrValues (
        builtins.mapAttrs (
          name: opt:
          if isOption opt then
            (if opt ? type && opt ? description && opt.description != "" then [ ] else [ "${prefix}.${name}" ])
          else
            undocumented "${prefix}.${name}" opt
        ) opts
      )
    );
in
{
  settings = cfg.settings;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (generated.assertions or [ ]));
  warnings = generated.warnings or [ ];
  firewall = generated.networking.firewall or { };
  service = generated.systemd.services."fleet-${role}" or null;
  undocumentedOptions = undocumented "services.fleet.${role}" options;
}
