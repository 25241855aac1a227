"""The README's client example, runnable: append, read the context window, look at the stats.

Run from anywhere with a Redis: ``MEMORY_REDIS_URL=redis://127.0.0.1:6379/0 python
docs/examples/quickstart.py`` (the resource comes from the packaged defaults). CI runs it
(tests/e2e/test_examples.py checks the lines marked ``expect``).

# expect: [REDACTED]
# expect: messages=2
"""

from __future__ import annotations

import uuid

from memory_engine import MemoryClient, Message


def main() -> None:
    with MemoryClient.from_env() as client:
        memory = client.memory(
            "customer-support",
            {
                "project": {"id": "acme"},
                "workflow": {"input": {"user_id": "u42", "conversation_id": uuid.uuid4().hex}},
            },
        )
        result = memory.append(Message(role="user", content="Where is ORD-1234? mail: a@b.co"))
        print(f"stored={result.stored} message_tokens={result.message_tokens}")
        memory.append_many([{"role": "assistant", "content": "Checking the order now."}])
        for message in memory.context():
            print(f"{message.role.value}: {message.content}")
        stats = memory.stats()
        print(f"messages={stats.message_count} tokens={stats.token_count}")
        memory.delete()


if __name__ == "__main__":
    main()
