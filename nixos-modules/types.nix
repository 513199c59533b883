# Option types for the values fleet parses strictly at start-up, so that a wrong node id, key,
# URL or address fails `nixos-rebuild` with the option's name instead of a unit that never
# starts. The patterns follow the Python parsers they stand in for: fleet/identity/nodeid.py,
# fleet/netaddr.py, fleet/relay/url.py and fleet/nix/fetch.py.
{ lib }:
let
  inherit (lib) types;

  described = description: pattern: types.strMatching pattern // { inherit description; };

  # 32 bytes as unpadded lowercase base32: 52 characters, the last holding 1 bit of the key
  # and 4 zero bits, so it is `a` or `q` (any other letter is a second spelling of a key).
  nodeIdPattern = "[a-z2-7]{51}[aq]";

  # HOST:PORT with a DNS name or IPv4 address, or IPv6 in brackets; port 1-65535.
  hostPattern = "([[][0-9A-Fa-f:.]+(%[0-9A-Za-z._-]+)?[]]|[A-Za-z0-9._-]+)";
  portPattern = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})";
  hostPortPattern = "${hostPattern}:${portPattern}";
in
{
  # A duration in seconds, an integer or a float (the agent reads either from TOML).
  seconds = types.addCheck (types.either types.ints.unsigned types.float) (x: x >= 0) // {
    description = "seconds (a number, 0 or more)";
  };
  positiveSeconds = types.addCheck (types.either types.ints.positive types.float) (x: x > 0) // {
    description = "seconds (a number above 0)";
  };

  nodeId = described "fleet node id (52 characters of a-z and 2-7, as `fleet id` prints it)" nodeIdPattern;

  hostPort = described "address HOST:PORT (IPv6 as [ADDRESS]:PORT)" hostPortPattern;

  relayUrl =
    described "fleet relay URL (fleet-relay://NODEID@HOST:PORT)"
      "fleet-relay(\\+insecure)?://${nodeIdPattern}@${hostPortPattern}";

  # NAME:BASE64 of a 32-byte Ed25519 key, as in nix.conf's trusted-public-keys.
  nixPublicKey =
    described "Nix public key (NAME:BASE64, e.g. cache.example.org-1: and 44 characters ending in =)"
      "[A-Za-z0-9._+-]+:[A-Za-z0-9+/]{43}=";

  # What the agent hands to Nix as a substituter: a URL of a scheme Nix fetches from, or a
  # local store (`/path`, `local?...`).
  substituterUrl =
    described "Nix substituter URL (https://, http://, file://, s3://, ssh://, ssh-ng://, or a local store path)"
      "(https?|file|s3|ssh|ssh-ng)://[^[:space:]]+|(/|local\\?)[^[:space:]]*";
}
