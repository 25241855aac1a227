"""Adapters that put a memory behind an agent framework's own history interface
(``docs/integrations.md``):

- :mod:`memory_engine.integrations.openai_agents`: ``MemoryEngineSession``, the OpenAI Agents
  SDK's ``Session`` protocol over an :class:`~memory_engine.aio.AsyncMemory` (extra
  ``openai-agents``);
- :mod:`memory_engine.integrations.langchain`: ``MemoryEngineMiddleware``, a LangChain 1.x agent
  middleware, and the legacy ``MemoryEngineChatMessageHistory`` (extra ``langchain``).

Each adapter imports its framework; ``import memory_engine`` imports neither (nor this package).
"""
