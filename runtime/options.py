"""Every flag of the runtime command, after click has parsed them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass
class Options:
    """Every flag of the runtime command, after click has parsed them."""

    prompt: Optional[str]
    model: Optional[str]
    n_predict: int
    ctx_size: int
    threads: Optional[int]
    temp: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    seed: int
    images: tuple[str, ...]
    mmproj: Optional[str]
    no_mmproj_offload: bool
    chat: bool
    cli: bool
    stop: tuple[str, ...]
    n_gpu_layers: str
    gpu: str
    gpu_device: Optional[str]
    main_gpu: Optional[int]
    split_mode: str
    flash_attn: str
    spec_type: str
    spec_draft_n_max: int
    spec_draft_n_min: int
    model_draft: Optional[str]
    spec_draft_ngl: Optional[str]
    rpc_workers: Optional[str]
    tensor_split: Optional[str]
    rpc_local: bool
    rpc_worker: Optional[str]
    mlock: bool
    no_mmap: bool
    server: bool
    host: str
    port: int
    api_key: Optional[str]
    cors_origin: tuple[str, ...]
    alias: Optional[str]
    reasoning_format: str
    nobrowser: bool
    allow_remote_media: bool
    media_path: Optional[Path]
    parallel: int
    grammar_file: Optional[str]
    json_schema: Optional[str]
    embedding: bool
    system: Optional[str]
    chat_template: Optional[str]
    cpu_variant: Optional[str]
    system_info: bool
    clean_cache: bool
    verbose: bool

    def sampling(self, grammar: Optional[str] = None) -> Any:
        from runtime.engine.decoding.model import Sampling

        return Sampling(
            grammar=grammar,
            temp=self.temp,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            seed=0xFFFFFFFF if self.seed < 0 else self.seed,
        )
