"""jakiro/common/hf_compat.py: the KV-cache keyword follows the installed transformers' signatures."""

import inspect

from transformers.models.llama.modeling_llama import LlamaAttention, LlamaModel

from jakiro.common.hf_compat import cache_keyword


def test_cache_keyword_reads_the_signature():
    def new_style(self, hidden_states, cache=None, **kwargs):
        pass

    def old_style(self, hidden_states, past_key_values=None, **kwargs):
        pass

    assert cache_keyword(new_style) == "cache"
    assert cache_keyword(old_style) == "past_key_values"


def test_installed_transformers_names_agree():
    # the target's model and the draft's attention layer must take the cache by the same, existing keyword
    keyword = cache_keyword(LlamaModel.forward)
    assert keyword == cache_keyword(LlamaAttention.forward)
    assert keyword in inspect.signature(LlamaModel.forward).parameters
