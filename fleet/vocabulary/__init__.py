"""Layer 1: the small vocabulary every layer shares (store paths, activation actions).

It sits beside fleet/identity at the bottom so that the wire schemas, the fleet protocol and
every role can name a store path or an action without importing fleet/nix, the one package
that runs Nix.
"""

from fleet.vocabulary.actions import Action
from fleet.vocabulary.store_paths import STORE_DIR, InvalidStorePath, check_store_path

__all__ = ["STORE_DIR", "Action", "InvalidStorePath", "check_store_path"]
