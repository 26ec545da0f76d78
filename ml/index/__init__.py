"""Face indexes: exact or HNSW inner-product search over L2-normalised embeddings, versions, files, open-set search."""

from ml.index.face_index import FaceIndex, IndexInputError, IndexSettings, build_index, check_embeddings
from ml.index.files import IndexFileError, load_index, save_index
from ml.index.search import UNKNOWN, Match, SearchResult, search_faces, similarity_threshold

__all__ = [
    "UNKNOWN",
    "FaceIndex",
    "IndexFileError",
    "IndexInputError",
    "IndexSettings",
    "Match",
    "SearchResult",
    "build_index",
    "check_embeddings",
    "load_index",
    "save_index",
    "search_faces",
    "similarity_threshold",
]
