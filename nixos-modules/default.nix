# The fleet NixOS modules: services.fleet.{agent,coordinator,relay}.
#
# Each module's `package` option defaults to `pkgs.nixos-fleet`, which nixpkgs does not have
# (nixpkgs' `pkgs.fleet` is fleetdm's, a different product): import them through the flake
# (`fleet.nixosModules.default`), which sets the package to the flake's build, add the
# flake's overlay (`fleet.overlays.default`), or set `services.fleet.<role>.package`.
{
  imports = [
    ./agent.nix
    ./coordinator.nix
    ./relay.nix
  ];
}
