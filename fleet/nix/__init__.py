"""The one place fleet runs Nix (closures, verified fetch, profiles, activation).

Everything is async (asyncio subprocesses), every call has a timeout, and failures are
typed NixErrors that carry Nix's own reason and stderr tail.
"""

from fleet.nix.activation import ActivationResult, run_switch
from fleet.nix.cache import SigningKey, copy_to_cache, generate_signing_key, sign_paths
from fleet.nix.closure import PathInfo, closure_paths, invalid_paths, is_valid, path_info
from fleet.nix.errors import (
    CacheUnreachable,
    HashMismatch,
    NixError,
    NixNotInstalled,
    NixTimeout,
    PathNotFound,
    ProfileError,
    SignatureError,
)
from fleet.nix.fetch import FetchResult, fetch_closure
from fleet.nix.profile import (
    Generation,
    current_system,
    delete_generations,
    list_generations,
    rollback,
    set_profile,
    switch_generation,
)
from fleet.nix.progress import FetchProgress
from fleet.nix.store import NixEnv, NixStore

__all__ = [
    "ActivationResult",
    "CacheUnreachable",
    "FetchProgress",
    "FetchResult",
    "Generation",
    "HashMismatch",
    "NixEnv",
    "NixError",
    "NixNotInstalled",
    "NixStore",
    "NixTimeout",
    "PathInfo",
    "PathNotFound",
    "ProfileError",
    "SignatureError",
    "SigningKey",
    "closure_paths",
    "copy_to_cache",
    "current_system",
    "delete_generations",
    "fetch_closure",
    "generate_signing_key",
    "invalid_paths",
    "is_valid",
    "list_generations",
    "path_info",
    "rollback",
    "run_switch",
    "set_profile",
    "sign_paths",
    "switch_generation",
]
