# The fleet NixOS modules: services.fleet.{agent,coordinator,relay}.
#
# Each module's `package` option defaults to `pkgs.fleet`. Outside nixpkgs, import them
# through the flake (`fleet.nixosModules.default`), which sets the package to the flake's
# build, or set `services.fleet.<role>.package` yourself.
{
  imports = [
    ./agent.nix
    ./coordinator.nix
    ./relay.nix
  ];
}
