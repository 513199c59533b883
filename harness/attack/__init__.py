"""The attacks of docs/attacks.md as code: the short versions in tests/attack/ and the long
ones in bench/ run the same cores."""
