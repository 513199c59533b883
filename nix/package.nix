# The fleet Python application, built with nixpkgs' Python tooling.
#
# Its attribute is `nixos-fleet` (flake.nix's overlay and packages): nixpkgs' `fleet` and
# `fleetctl` are fleetdm's, a different product. The binaries are still `fleet` and
# `fleetctl`; docs/nix.md says how to have both installed.
{
  lib,
  stdenv,
  python3,
  fetchPypi,
  installShellFiles,
  openssh,
}:

let
  # pyproject.toml pins aioquic exactly (fleet/mesh/tls_hooks.py relies on private TLS
  # internals), and aioice to 0.13.x. nixpkgs may carry other versions (it had aioquic
  # 1.3.0 and pylsqpack 0.3.x, while aioquic 1.7.2 needs pylsqpack >= 1.0), so those three
  # are built at the pinned versions here instead of relaxing the pins. Hashes are those
  # of the PyPI sdists. Drop an override once nixpkgs has that exact version.
  python = python3.override {
    self = python;
    packageOverrides = pyfinal: pyprev: {
      pylsqpack = pyprev.pylsqpack.overridePythonAttrs (old: rec {
        version = "1.0.0";
        src = fetchPypi {
          pname = "pylsqpack";
          inherit version;
          hash = "sha256-RnStwsgzwccKNkVPV3Tp3vlPwxCeSoRk2ASvKiAwlXo=";
        };
      });
      aioquic = pyprev.aioquic.overridePythonAttrs (old: rec {
        version = "1.7.2";
        src = fetchPypi {
          pname = "aioquic";
          inherit version;
          hash = "sha256-Te98sKaS3BLJlcw5epP0G3jMMLe/B4dpw6O7G6nc82I=";
        };
        # Its test suite is not the one the nixpkgs expression was written for; what
        # fleet uses of aioquic is covered by fleet's own tests.
        doCheck = false;
      });
      # Not in nixpkgs: a classic RFC 3489 STUN client, used only by the relay's STUN tests
      # (tests/unit/stun/test_answerer.py) as a client nobody here wrote.
      pystun3 = pyfinal.buildPythonPackage rec {
        pname = "pystun3";
        version = "2.0.0";
        pyproject = true;
        src = fetchPypi {
          inherit pname version;
          hash = "sha256-mav+g99p/Q9ieOm+FFaCf6+55OJe/tgHTRW3VKybH+4=";
        };
        build-system = [ pyfinal.setuptools ];
        doCheck = false;
      };
      aioice = pyprev.aioice.overridePythonAttrs (old: rec {
        version = "0.13.0";
        src = fetchPypi {
          pname = "aioice";
          inherit version;
          hash = "sha256-AsLe6BLxpoYCaJpES9USWhRLbuQ7ynQimh4PeELRiXw=";
        };
        dependencies = [
          pyfinal.dnspython
          pyfinal.ifaddr
        ];
        doCheck = false;
      });
    };
  };
in
python.pkgs.buildPythonApplication {
  pname = "nixos-fleet";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../fleet
      # What the tests share with bench/ (harness/narinfos.py, ...); pyproject's package
      # discovery keeps it out of the installed package.
      ../harness
      # bench/'s own statistics have unit tests (tests/unit/bench/); not installed either.
      ../bench
      ../tests
      ../docs
    ];
  };

  build-system = [ python.pkgs.setuptools ];

  nativeBuildInputs = [ installShellFiles ];

  dependencies = with python.pkgs; [
    aioquic
    aioice
    pynacl
    msgpack
    aiosqlite
    click
    structlog
    cryptography
  ];

  nativeCheckInputs = with python.pkgs; [
    pytestCheckHook
    pytest-asyncio
    pytest-timeout
    hypothesis
    # tests/unit/identity/test_openssh.py reads OpenSSH host keys made by ssh-keygen (mark `openssh`).
    openssh
    pyte # tests/unit/admin/test_live.py replays the live views on a terminal emulator
    pystun3 # tests/unit/stun/test_answerer.py: a third-party STUN client
  ];

  # The unit tests only: the integration tests need real Nix, network namespaces and root,
  # none of which the build sandbox has (the NixOS VM test in checks covers the real thing).
  # scripts/sandbox-unit-tests runs this selection under the sandbox's conditions (no
  # network, HOME=/homeless-shelter, no nix, not root), and a test runs that script.
  enabledTestPaths = [ "tests/unit" ];
  disabledTestMarks = [
    "nix"
    "root"
  ];

  # Shell completion from click (`_FLEET_COMPLETE=bash_source fleet`, ...), generated from
  # the installed entry points; skipped when cross-compiling, as they cannot run then.
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    for program in fleet fleetctl; do
      variable=_''${program^^}_COMPLETE
      installShellCompletion --cmd "$program" \
        --bash <(env "$variable=bash_source" "$out/bin/$program") \
        --zsh <(env "$variable=zsh_source" "$out/bin/$program") \
        --fish <(env "$variable=fish_source" "$out/bin/$program")
    done
  '';

  pythonImportsCheck = [ "fleet" ];

  passthru.python = python;

  meta = {
    description = "Fleet management for NixOS devices over a peer-to-peer QUIC mesh";
    license = lib.licenses.mit;
    mainProgram = "fleet";
    platforms = lib.platforms.linux;
  };
}
