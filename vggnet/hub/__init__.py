"""The weights store: fetch, verify, cache and read checkpoint files. Plain values in, verified files out.

The flow: a URL -> `fetch` (a cache hit vouched for by a stamp, or a download hashed while it streams)
-> a verified file -> `open_verified`: the file opened once and that open file checked against the digest
-> every reader reads that same open file (a weights-only torch load, safetensors, Keras HDF5 read as
data) -> a state dict. Everything below this facade is private to the package, one layer per module,
each importing only the ones below it:

- `_files`: opening without following links, hashing, private temporary files, atomic publishing;
- `_cache`: the cache folder, its names and the stamps that vouch for its files;
- `_locks`, `_admin`: partial downloads and locks; listing and removing what a folder holds;
- `_partial`, `_deadline`, `_download`: one HTTP transfer, bounded, resumed, verified;
- `_formats`, `_hdf5`, `_loading`: what format a file is, writing tensors; Keras' HDF5 read strictly as data;
  the verified open file and the weights-only load of it;
- `_huggingface`: the Hugging Face Hub as a source of files, fetched by `_download` into the Hub's cache layout;
- `_fetching`: the entry points below (the cache, mirrors, offline use, local files).

What the tensors mean (vggnet's, timm's or Keras' layout) is `vggnet.models.layouts`'; building a model
from them is `vggnet.models.checkpoint`'s.
"""

from vggnet.hub._admin import CachedFile, Removed, cached_files, remove_cached
from vggnet.hub._cache import cache_dir, file_name_from_url, normalize_digest, verify_file
from vggnet.hub._download import Timeout
from vggnet.hub._fetching import (
    OFFICIAL_BASE,
    add_to_mirror,
    fetch,
    load_state_dict_from_url,
    load_weights,
    open_verified,
)
from vggnet.hub._formats import (
    FORMATS,
    WRITE_SUFFIXES,
    Format,
    detect_format,
    file_sha256,
    load_safetensors,
    save_safetensors,
    sniff_format,
    write_tensors,
)
from vggnet.hub._hdf5 import read_keras_layers
from vggnet.hub._huggingface import HF_PREFIX, HubFetched, HubName, hf_hub_file, is_hf_hub, load_hf_hub, parse_hf_hub
from vggnet.hub._loading import MapLocation, VerifiedFile, read_tensors, weights_only_load

__all__ = [
    "FORMATS",
    "HF_PREFIX",
    "OFFICIAL_BASE",
    "WRITE_SUFFIXES",
    "CachedFile",
    "Format",
    "HubFetched",
    "HubName",
    "MapLocation",
    "Removed",
    "Timeout",
    "VerifiedFile",
    "add_to_mirror",
    "cache_dir",
    "cached_files",
    "detect_format",
    "fetch",
    "file_name_from_url",
    "file_sha256",
    "hf_hub_file",
    "is_hf_hub",
    "load_safetensors",
    "load_hf_hub",
    "load_state_dict_from_url",
    "load_weights",
    "normalize_digest",
    "open_verified",
    "parse_hf_hub",
    "read_keras_layers",
    "read_tensors",
    "remove_cached",
    "save_safetensors",
    "sniff_format",
    "verify_file",
    "weights_only_load",
    "write_tensors",
]
