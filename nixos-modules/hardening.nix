# Hardened systemd service settings shared by the coordinator and the relay: network daemons
# that need no privilege beyond (maybe) binding a low port, with their state (key, database)
# in a StateDirectory owned by a dynamic user and the key file handed in as a credential.
{ lib }:
{
  stateDir,
  keyFile,
  lowPort,
}:
let
  inherit (lib) optional;
in
{
  DynamicUser = true;
  StateDirectory = stateDir;
  StateDirectoryMode = "0700";
  LoadCredential = optional (keyFile != null) "node.key:${keyFile}";
  UMask = "0077";

  # Binding a port below 1024 is the only privilege it may need.
  AmbientCapabilities = optional lowPort "CAP_NET_BIND_SERVICE";
  CapabilityBoundingSet = if lowPort then [ "CAP_NET_BIND_SERVICE" ] else "";
  DevicePolicy = "closed";
  LockPersonality = true;
  NoNewPrivileges = true;
  PrivateDevices = true;
  PrivateTmp = true;
  # A user namespace would drop CAP_NET_BIND_SERVICE for the host network.
  PrivateUsers = !lowPort;
  ProcSubset = "pid";
  ProtectClock = true;
  ProtectControlGroups = true;
  ProtectHome = true;
  ProtectHostname = true;
  ProtectKernelLogs = true;
  ProtectKernelModules = true;
  ProtectKernelTunables = true;
  ProtectProc = "invisible";
  ProtectSystem = "strict";
  RemoveIPC = true;
  RestrictAddressFamilies = [
    "AF_INET"
    "AF_INET6"
    "AF_UNIX"
  ];
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  SystemCallArchitectures = "native";
  SystemCallFilter = [
    "@system-service"
    "~@privileged"
  ];
  # MemoryDenyWriteExecute is not set: the cffi-based dependencies (PyNaCl,
  # cryptography) are not known to work without writable+executable pages.
}
