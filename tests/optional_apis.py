"""The call signatures of the optional generation stacks that rag/llm.py calls (vllm,
llama-cpp-python), so that tests which run without them still fail on a wrong call.

`signature_of("vllm.SamplingParams")` is inspect.signature of the real object when its package
is installed, else the stub below of the same name. The stubs were taken from the released
sources with `ast` (parameter names, order, kinds and which have defaults; the default values
themselves do not matter here and are `_`): vllm==0.32.0 (pyproject's gpu extra;
vllm/sampling_params.py, vllm/entrypoints/llm.py) and llama-cpp-python==0.3.36 (the newest
release when written: the llamacpp extra is unpinned; llama_cpp/llama.py, llama_grammar.py).
Methods are written without `self`/`cls`. Update a stub when the pinned version changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any, Callable

_ = None


class _Stubs:
    # vllm.SamplingParams: a msgspec.Struct, its fields are its parameters
    @staticmethod
    def vllm__SamplingParams(n=_, presence_penalty=_, frequency_penalty=_, repetition_penalty=_, temperature=_,
                             watermarking=_, top_p=_, top_k=_, min_p=_, seed=_, stop=_, stop_token_ids=_,
                             ignore_eos=_, max_tokens=_, min_tokens=_, logprobs=_, prompt_logprobs=_,
                             prompt_logprob_token_ids=_, prompt_logprob_start=_, logprob_token_ids=_,
                             flat_logprobs=_, detokenize=_, skip_special_tokens=_,
                             spaces_between_special_tokens=_, include_stop_str_in_output=_, output_kind=_,
                             stream_interval=_, skip_clone=_, output_text_buffer_length=_, _eos_token_id=_,
                             _all_stop_token_ids=_, _watermarking_skipped=_, structured_outputs=_,
                             logit_bias=_, allowed_token_ids=_, extra_args=_, bad_words=_,
                             _bad_words_token_ids=_, skip_reading_prefix_cache=_, thinking_token_budget=_,
                             repetition_detection=_, routed_experts_prompt_start=_,
                             trace_decode_token_ids=_): ...

    # vllm.sampling_params.StructuredOutputsParams: a dataclass (its init=False fields left out)
    @staticmethod
    def vllm__sampling_params__StructuredOutputsParams(json=_, regex=_, choice=_, grammar=_, json_object=_,
                                                       disable_any_whitespace=_,
                                                       disable_additional_properties=_,
                                                       whitespace_pattern=_, structural_tag=_): ...

    @staticmethod
    def vllm__LLM____init__(model, *, runner=_, convert=_, tokenizer=_, tokenizer_mode=_, skip_tokenizer_init=_,
                            trust_remote_code=_, allowed_local_media_path=_, allowed_media_domains=_,
                            tensor_parallel_size=_, dtype=_, quantization=_, revision=_, tokenizer_revision=_,
                            chat_template=_, seed=_, gpu_memory_utilization=_, cpu_offload_gb=_,
                            offload_group_size=_, offload_num_in_group=_, offload_prefetch_step=_,
                            offload_params=_, enforce_eager=_, enable_return_routed_experts=_,
                            return_sampling_mask=_, disable_custom_all_reduce=_, hf_token=_, hf_overrides=_,
                            mm_processor_kwargs=_, pooler_config=_, structured_outputs_config=_,
                            profiler_config=_, attention_config=_, kv_cache_memory_bytes=_,
                            compilation_config=_, quantization_config=_, logits_processors=_, spec_method=_,
                            spec_model=_, spec_tokens=_, **kwargs): ...

    @staticmethod
    def vllm__LLM__generate(prompts, sampling_params=_, *, use_tqdm=_, lora_request=_, priority=_,
                            tokenization_kwargs=_, mm_processor_kwargs=_): ...

    @staticmethod
    def vllm__LLM__get_tokenizer(): ...

    @staticmethod
    def llama_cpp__Llama____init__(model_path, *, n_gpu_layers=_, split_mode=_, main_gpu=_, tensor_split=_,
                                   vocab_only=_, use_mmap=_, use_mlock=_, kv_overrides=_, seed=_, n_ctx=_,
                                   n_batch=_, n_ubatch=_, n_threads=_, n_threads_batch=_, rope_scaling_type=_,
                                   pooling_type=_, attention_type=_, rope_freq_base=_, rope_freq_scale=_,
                                   yarn_ext_factor=_, yarn_attn_factor=_, yarn_beta_fast=_, yarn_beta_slow=_,
                                   yarn_orig_ctx=_, logits_all=_, embedding=_, offload_kqv=_, flash_attn=_,
                                   op_offload=_, swa_full=_, no_perf=_, last_n_tokens_size=_, lora_base=_,
                                   lora_scale=_, lora_path=_, numa=_, chat_format=_, chat_handler=_,
                                   draft_model=_, tokenizer=_, type_k=_, type_v=_, spm_infill=_, verbose=_,
                                   **kwargs): ...

    @staticmethod
    def llama_cpp__Llama____call__(prompt, suffix=_, max_tokens=_, temperature=_, top_p=_, min_p=_, typical_p=_,
                                   logprobs=_, echo=_, stop=_, frequency_penalty=_, presence_penalty=_,
                                   repeat_penalty=_, top_k=_, stream=_, seed=_, tfs_z=_, mirostat_mode=_,
                                   mirostat_tau=_, mirostat_eta=_, model=_, stopping_criteria=_,
                                   logits_processor=_, grammar=_, logit_bias=_): ...

    @staticmethod
    def llama_cpp__Llama__create_chat_completion(messages, functions=_, function_call=_, tools=_, tool_choice=_,
                                                 temperature=_, top_p=_, top_k=_, min_p=_, typical_p=_,
                                                 stream=_, stop=_, seed=_, response_format=_, max_tokens=_,
                                                 presence_penalty=_, frequency_penalty=_, repeat_penalty=_,
                                                 tfs_z=_, mirostat_mode=_, mirostat_tau=_, mirostat_eta=_,
                                                 model=_, logits_processor=_, grammar=_, logit_bias=_,
                                                 logprobs=_, top_logprobs=_): ...

    @staticmethod
    def llama_cpp__Llama__tokenize(text, add_bos=_, special=_): ...

    @staticmethod
    def llama_cpp__LlamaGrammar__from_json_schema(json_schema, verbose=_): ...


def signature_of(target: str) -> inspect.Signature:
    """The signature of "package.Object" or "package.Class.method" (methods without self/cls):
    the installed package's own, else its stub above."""
    package, *path = target.split(".")
    if importlib.util.find_spec(package) is not None:
        parent, obj = None, importlib.import_module(package)
        for part in path:
            parent, obj = obj, getattr(obj, part)
        signature = inspect.signature(obj)
        if isinstance(parent, type) and inspect.isfunction(obj) and \
                not isinstance(inspect.getattr_static(parent, path[-1]), staticmethod):
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])  # self
        return signature
    return inspect.signature(getattr(_Stubs, target.replace(".", "__")))


class Checked:
    """A stand-in for `target` that refuses any call its real signature would refuse (TypeError,
    as the real one raises), records each call's arguments by name and answers `returns(**args)`."""

    def __init__(self, target: str, returns: Callable[..., Any] | None = None) -> None:
        self.target, self.signature = target, signature_of(target)
        self.returns = returns or (lambda **arguments: arguments)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arguments = dict(self.signature.bind(*args, **kwargs).arguments)
        self.calls.append(arguments)
        return self.returns(**arguments)
