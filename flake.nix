{
  description = "fleet: NixOS fleet management over a peer-to-peer QUIC mesh";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # A role module plus the default package: this flake's build for the host's system.
      withPackage =
        role: module:
        { lib, pkgs, ... }:
        {
          imports = [ module ];
          services.fleet.${role}.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
    in
    {
      # `nixos-fleet`, never `fleet`: nixpkgs' `fleet` and `fleetctl` are fleetdm's, a
      # different product, and an overlay replacing them would break whoever uses it.
      overlays.default = final: _prev: { nixos-fleet = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (pkgs: rec {
        nixos-fleet = pkgs.callPackage ./nix/package.nix { };
        default = nixos-fleet;
      });

      nixosModules = {
        agent = withPackage "agent" ./nixos-modules/agent.nix;
        coordinator = withPackage "coordinator" ./nixos-modules/coordinator.nix;
        relay = withPackage "relay" ./nixos-modules/relay.nix;
        default = {
          imports = [
            self.nixosModules.agent
            self.nixosModules.coordinator
            self.nixosModules.relay
          ];
        };
      };

      devShells = forAllSystems (
        pkgs:
        let
          fleet = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        in
        {
          default = pkgs.mkShell {
            packages = [
              # The same Python and pinned dependencies as the package, plus the test tools.
              (fleet.passthru.python.withPackages (
                ps: with ps; [
                  aioquic
                  aioice
                  pynacl
                  msgpack
                  aiosqlite
                  click
                  structlog
                  cryptography
                  pytest
                  pytest-asyncio
                  pytest-timeout
                  hypothesis
                  mypy
                ]
              ))
              pkgs.ruff
              pkgs.nix
            ];
            shellHook = ''
              export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
            '';
          };
        }
      );

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        # Coordinator and relay on a public network, an agent behind a NAT router; a push
        # switches the agent to a second system fetched from the coordinator's binary cache.
        update-chain = pkgs.testers.runNixOSTest (
          import ./nix/tests/update-chain.nix { fleetModules = self.nixosModules.default; }
        );
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
