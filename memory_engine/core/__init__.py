"""The engine's decisions, without I/O: what the sync client, the async client and the workers
share. Nothing here talks to Redis, the broker or an LLM; every function takes values and returns
values, so each rule exists once and is tested with canned inputs.

- :mod:`~memory_engine.core.plans`: snapshots, summaries and flush plans (what a flush works on);
- :mod:`~memory_engine.core.columns`: planning from each stored element's header, without decoding;
- :mod:`~memory_engine.core.units`: messages grouped into units that are kept or removed together
  (a tool call and its results).
"""
