"""The text, split two ways: the first CLIENTS fortune files are the clients (one file each, its
tail held out for federated evaluation); the files after them are the corpus the base model is
pre-trained on, centrally, before any client is seen. Characters are the tokens (nextchar's fixed
vocabulary), so no tokenizer has to be downloaded."""

from __future__ import annotations

import numpy as np
from nextchar import data as text

VOCAB = text.VOCAB
CLIENTS = 30  # files 0..29 are clients; 30.. are the base model's pre-training corpus


def client_text(client: int, root: str = text.ROOT, holdout: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, held out) character ids of client `client`'s file."""
    ids = text.encode(text.read_text(text.files(root)[client]))
    k = min(max(int(len(ids) * holdout), 128), len(ids) // 2)
    return ids[:len(ids) - k], ids[len(ids) - k:]


def pretrain_text(root: str = text.ROOT) -> np.ndarray:
    """Every file after the clients', one stream of character ids."""
    return np.concatenate([text.encode(text.read_text(p)) for p in text.files(root)[CLIENTS:]])
