# The `package` option of every fleet module. nixpkgs has no `nixos-fleet` (its `fleet` and
# `fleetctl` are fleetdm's, another product), so the default must not fall back to `pkgs.fleet`:
# without this flake's overlay or an explicit package, evaluation stops and says what to add.
{ lib, pkgs }:
role:
lib.mkPackageOption pkgs "nixos-fleet" {
  extraDescription = ''
    It is not in nixpkgs: the flake's `nixosModules` set it to the flake's build, and its
    `overlays.default` adds `pkgs.nixos-fleet`. (`pkgs.fleet` is fleetdm's, a different
    product.)
  '';
}
// {
  default =
    pkgs.nixos-fleet or (throw ''
      services.fleet.${role}.package: pkgs.nixos-fleet does not exist. It is not in nixpkgs (nixpkgs'
      `fleet` is fleetdm's, a different product). Import the modules from fleet's flake
      (fleet.nixosModules.default sets the package), add its overlay
      (nixpkgs.overlays = [ fleet.overlays.default ]), or set services.fleet.${role}.package.
    '');
}
