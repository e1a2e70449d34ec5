"""Training-data generation for the draft head: the target's features for chat conversations.

* :mod:`jakiro.common.chat_templates` (re-exported here): chat formatting and the assistant loss mask (tokenizer chat
  templates, FastChat vicuna / llama-2, Llama-3);
* ``generate``: the resumable, distributed pipeline writing safetensors shards + ``manifest.json``
  (``python -m jakiro.ge_data``; ``python -m jakiro.ge_data.allocation --outdir DIR`` is the reference's alias);
* ``dataset``: the stored shards as a torch Dataset, and an online Dataset computing the same items on the fly.
"""

from jakiro.ge_data.dataset import FeatureShards, OnlineFeatures, read_manifest
from jakiro.ge_data.generate import GeDataError, generate_features, load_conversations, load_target, target_features
from jakiro.common.chat_templates import (TEMPLATE_NAMES, SkipConversation, TemplateError, encode, get_template,
                                          to_messages)

__all__ = ["FeatureShards", "OnlineFeatures", "read_manifest", "GeDataError", "generate_features",
           "load_conversations", "load_target", "target_features", "TEMPLATE_NAMES", "SkipConversation",
           "TemplateError", "encode", "get_template", "to_messages"]
