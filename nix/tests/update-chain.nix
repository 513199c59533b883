# NixOS VM test of the whole update chain, for pkgs.testers.runNixOSTest.
#
#   vlan 1 ("public"):  router (eth1) 192.168.1.1, coordinator .10, relay .11
#   vlan 2 (private):   router (eth2) 192.168.2.1, agent .10 (default route: the router)
#
# The router masquerades vlan 2 behind its public address, and nothing on vlan 1 has a
# route back: the agent reaches the coordinator only through the NAT, as a device would.
# The coordinator also serves a signed binary cache (nix-serve) holding the agent's second
# system configuration (the node `agentNext`, never started; its toplevel is pushed). The
# admin runs fleetctl on the coordinator host with a test key.
{ fleetModules }:
{ lib, ... }:

let
  keys = ./keys; # test-only keys, see keys/README.md
  coordinatorId = "3nxzva5ads6k2wxloichezh7wc3kfxmx3l5n2rvlou5n6c6hjwba";
  relayId = "w7d7lwqx4q3cksnxvz3c4ca3mxrymm6456o6qbxxsjvr55nh5dea";
  adminId = "oy3cjyr2cihy6wdpy42tweykrljewe65sz64o43kxle3dcqjvarq";
  cacheKey = "fleet-vm-test-1:BRBUqTnM6bXs36B64z9FVyKjgmekOd14u7LUrsMAqjY=";

  ip = {
    routerPublic = "192.168.1.1";
    coordinator = "192.168.1.10";
    relay = "192.168.1.11";
    routerPrivate = "192.168.2.1";
    agent = "192.168.2.10";
  };
  coordinatorPort = 7443;
  relayPort = 4433;
  cachePort = 5000;
  relayUrl = "fleet-relay://${relayId}@${ip.relay}:${toString relayPort}";

  # The test framework numbers addresses by node; fixed ones let `agent` and `agentNext`
  # be the same machine on the network.
  address = iface: addr: {
    networking.interfaces.${iface}.ipv4.addresses = lib.mkForce [
      {
        address = addr;
        prefixLength = 24;
      }
    ];
  };

  # Both configurations of the device; they differ in one file, /etc/fleet-test-generation.
  agentConfig =
    generation:
    { lib, ... }:
    {
      imports = [
        fleetModules
        (address "eth1" ip.agent)
      ];
      virtualisation.vlans = [ 2 ];
      networking.hostName = lib.mkForce "agent";
      networking.defaultGateway = {
        address = ip.routerPrivate;
        interface = "eth1";
      };
      # Creates /etc/ssh/ssh_host_ed25519_key, the agent's identity by default.
      services.openssh.enable = true;

      services.fleet.agent = {
        enable = true;
        coordinator = {
          nodeId = coordinatorId;
          addresses = [ "${ip.coordinator}:${toString coordinatorPort}" ];
        };
        relays = [ relayUrl ];
        trustRoots = [ adminId ];
        substituters = [ "http://${ip.coordinator}:${toString cachePort}" ];
        trustedPublicKeys = [ cacheKey ];
        settings.log_level = "debug";
      };

      environment.etc."fleet-test-generation".text = "${toString generation}\n";
    };
in
{
  name = "fleet-update-chain";

  nodes = {
    router =
      { ... }:
      {
        imports = [
          (address "eth1" ip.routerPublic)
          (address "eth2" ip.routerPrivate)
        ];
        virtualisation.vlans = [
          1
          2
        ];
        networking.nat = {
          enable = true;
          externalInterface = "eth1";
          internalInterfaces = [ "eth2" ];
        };
      };

    relay =
      { ... }:
      {
        imports = [
          fleetModules
          (address "eth1" ip.relay)
        ];
        virtualisation.vlans = [ 1 ];
        services.fleet.relay = {
          enable = true;
          port = relayPort;
          keyFile = "${keys}/relay.key";
          # STUN on UDP 3478 (stunPort's default), opened with the relay's port.
          openFirewall = true;
          settings.log_level = "debug";
        };
      };

    coordinator =
      { nodes, pkgs, ... }:
      {
        imports = [
          fleetModules
          (address "eth1" ip.coordinator)
        ];
        virtualisation.vlans = [ 1 ];
        services.fleet.coordinator = {
          enable = true;
          port = coordinatorPort;
          keyFile = "${keys}/coordinator.key";
          openFirewall = true;
          relays = [ relayUrl ];
          trustRoots = [ adminId ];
          settings.log_level = "debug";
        };

        # The binary cache the agent fetches from: nix-serve signs what this store holds,
        # and the second agent system is registered in this store.
        services.nix-serve = {
          enable = true;
          port = cachePort;
          secretKeyFile = "${keys}/cache.secret";
        };
        networking.firewall.allowedTCPPorts = [ cachePort ];
        virtualisation.additionalPaths = [ nodes.agentNext.system.build.toplevel ];

        # fleet and fleetctl are on the PATH through the coordinator module itself.
        environment.systemPackages = [ pkgs.jq ];
      };

    agent = agentConfig 1;
    agentNext = agentConfig 2;
  };

  testScript =
    { nodes, ... }:
    let
      nextSystem = nodes.agentNext.system.build.toplevel;
    in
    ''
      import json

      fleetctl = (
          "fleetctl --coordinator ${coordinatorId}@127.0.0.1:${toString coordinatorPort} "
          "--key ${keys}/admin.key --timeout 30"
      )

      # agentNext is only a configuration to push; it never boots.
      for machine in (router, relay, coordinator, agent):
          machine.start()

      coordinator.wait_for_unit("fleet-coordinator.service")
      coordinator.wait_for_unit("nix-serve.service")
      relay.wait_for_unit("fleet-relay.service")
      relay.wait_for_open_port(${toString relayPort})
      # The relay module puts fleet on the PATH, as the docs' `fleet id` on the VPS needs.
      assert relay.succeed("fleet id ${keys}/relay.key").strip() == "${relayId}"
      relay.wait_until_succeeds("ss -Hlun 'sport = :3478' | grep -q 3478", timeout=30)
      agent.wait_for_unit("fleet-agent.service")

      with subtest("the agent is behind the NAT"):
          agent.wait_until_succeeds("ping -c 1 -W 2 ${ip.coordinator}", timeout=60)
          coordinator.fail("ping -c 1 -W 2 ${ip.agent}")

      with subtest("the admin registers the device; it shows up online"):
          agent_id = agent.succeed("fleet id /etc/ssh/ssh_host_ed25519_key").strip()
          coordinator.succeed(f"{fleetctl} devices add {agent_id} --name agent --tag lab")
          coordinator.wait_until_succeeds(
              f"{fleetctl} status --json"
              " | jq -e '.[] | select(.name == \"agent\") | select(.online)'",
              timeout=120,
          )

      with subtest("a push switches the agent to its second system"):
          coordinator.succeed(f"{fleetctl} push ${nextSystem} --to tag:lab --wait --timeout 600")
          devices = json.loads(coordinator.succeed(f"{fleetctl} status --json"))
          device = next(d for d in devices if d["name"] == "agent")
          assert device["state"] == "applied", device
          assert device["current"]["store_path"] == "${nextSystem}", device
          assert device["desired"]["store_path"] == "${nextSystem}", device
          assert device["path"] in ("direct", "relay"), device
          agent.succeed("test \"$(readlink -f /run/current-system)\" = ${nextSystem}")
          agent.succeed("grep -qx 2 /etc/fleet-test-generation")

      with subtest("the switch did not restart the agent (restartIfChanged = false)"):
          agent.succeed("systemctl is-active fleet-agent.service")
          agent.succeed("journalctl -u fleet-agent.service | grep -c agent_started | grep -qx 1")
    '';
}
