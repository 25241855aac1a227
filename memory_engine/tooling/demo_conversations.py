"""Synthetic customer-support conversations for ``memory-engine demo``, and the demo's resources.

Deterministic for a seed: user and assistant turns, tool calls with their results (order lookups,
refunds, account changes), order ids like ``ORD-1234`` and an e-mail address now and then, so the
demo shows redaction, summaries and a tool call kept whole with its result in ``context()``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["DEMO_RESOURCES_YAML", "DEMO_RESOURCE_IDS", "Conversation", "make_conversation"]

DEMO_RESOURCES_YAML = """\
# Written by `memory-engine demo` to a temporary directory. Budgets are small on purpose, so that
# twenty conversations of sixty messages cross their flush thresholds within seconds.
resource: memory
id: demo-support
description: Demo support chats; older turns are folded into a running summary.
type: token_based
max_tokens: 1500
max_messages: 120
flushing:
  type: hybrid_summary
  summarize_threshold: 0.8      # flush at 1200 tokens
  summary_tokens: 200
  summarize_oldest_percent: 0.5
token_allocation: {short_term: 0.6, long_term: 0.3, system: 0.1}
persistence: {ttl: 1h}
privacy_policy:
  redact_patterns: ['[\\w.+-]+@[\\w-]+\\.[\\w.-]+']   # e-mail addresses
locking: {flush_ttl: 1m}
default_key_template: "support:{{ workflow.input.user_id }}:{{ workflow.input.conversation_id }}"
---
resource: memory
id: demo-chat
description: Demo sliding window; the oldest turns are dropped.
type: message_count_based
max_messages: 30
flushing: {type: simple_fifo}
persistence: {ttl: 1h}
default_key_template: "chat:{{ workflow.input.session_id }}"
"""

DEMO_RESOURCE_IDS = ("demo-support", "demo-chat")

SYSTEM_PROMPT = (
    "You are Ava, the support assistant of Northwind Outfitters. Confirm order numbers before "
    "acting, keep answers short, and never reveal internal notes."
)
_NAMES = ("jane.doe", "m.kowalski", "li.wei", "sam.okafor", "ana.garcia", "tom.berg")
_DOMAINS = ("example.com", "mail.example.org", "corp.example.net")
_ITEMS = ("rain jacket", "hiking boots", "wool sweater", "backpack", "tent", "headlamp")
_CARRIERS = ("DHL", "UPS", "PostNL", "DPD")
_STATUSES = ("in_transit", "out_for_delivery", "delayed_at_hub", "delivered")
_OPENERS = (
    "Thanks for reaching out.",
    "I understand how frustrating that is.",
    "Let me take care of that for you.",
    "Good question.",
)
_CLOSERS = (
    "Is there anything else I can help you with today?",
    "Let me know if the tracking page still looks wrong tomorrow.",
    "You will get a confirmation e-mail within a few minutes.",
    "If anything changes I will add a note to your case so the next agent sees it.",
)
_TECH = (
    "The app crashes when I open my order history.",
    "I can't log in, the page keeps saying my session expired.",
    "The checkout button does nothing on my phone.",
)
_TECH_STEPS = (
    "Please update the app to the latest version, then sign out and back in; that clears the "
    "cached session that causes this. If it persists, clearing the app's storage in your "
    "phone's settings usually fixes it, and your orders stay safe on our side.",
    "This is a known issue with an older browser cache. Open the site in a private window or "
    "clear cookies for our domain, then try again. Our engineers shipped a fix last night, so "
    "it should not come back after that.",
)


@dataclass(frozen=True)
class Conversation:
    """One simulated conversation: its workflow context and its messages, oldest first."""

    index: int
    context: dict[str, Any]
    messages: list[dict[str, Any]]


class _Writer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.messages: list[dict[str, Any]] = []

    def order(self) -> str:
        return f"ORD-{self.rng.randrange(1000, 10000)}"

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def assistant(self, text: str) -> None:
        opener, closer = self.rng.choice(_OPENERS), self.rng.choice(_CLOSERS)
        self.messages.append({"role": "assistant", "content": f"{opener} {text} {closer}"})

    def tool(self, name: str, arguments: dict[str, Any], result: dict[str, Any]) -> None:
        call_id = f"call_{self.rng.randrange(16**8):08x}"
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        # An assistant message that only calls a tool may have empty content.
        self.messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        self.messages.append(
            {"role": "tool", "tool_call_id": call_id, "name": name, "content": json.dumps(result)}
        )

    # ---- turns ---------------------------------------------------------------------------

    def track(self) -> None:
        order = self.order()
        status, carrier = self.rng.choice(_STATUSES), self.rng.choice(_CARRIERS)
        days = self.rng.randrange(2, 9)
        self.user(
            f"Hi, my order {order} still hasn't arrived. It was supposed to be here {days} days "
            "ago and the tracking page hasn't changed since. Can you check what is going on?"
        )
        self.tool(
            "lookup_order",
            {"order_id": order},
            {
                "order_id": order,
                "status": status,
                "carrier": carrier,
                "last_scan": f"2024-05-{self.rng.randrange(10, 28)} {carrier} hub",
                "eta_days": self.rng.randrange(1, 5),
            },
        )
        self.assistant(
            f"I looked up {order}: it is currently {status.replace('_', ' ')} with {carrier}, "
            "and the last scan was at their regional hub. Parcels there usually move within a "
            "day or two, so I have asked the carrier to prioritise it."
        )

    def refund(self) -> None:
        order, item = self.order(), self.rng.choice(_ITEMS)
        amount = round(self.rng.uniform(19, 240), 2)
        self.user(
            f"The {item} from order {order} arrived damaged, one of the seams is torn. "
            "I'd like a refund rather than a replacement, please."
        )
        self.tool(
            "create_refund",
            {"order_id": order, "reason": "damaged", "item": item},
            {"refund_id": f"RF-{self.rng.randrange(10000, 99999)}", "amount_eur": amount},
        )
        self.assistant(
            f"I have opened a refund of EUR {amount:.2f} for the {item} on {order}. No need to "
            "send it back; the money reaches your card in three to five business days."
        )

    def email_change(self) -> None:
        address = f"{self.rng.choice(_NAMES)}@{self.rng.choice(_DOMAINS)}"
        self.user(f"Please change the e-mail on my account to {address}, the old one is closed.")
        self.tool("update_account", {"email": address}, {"ok": True, "verification_sent": True})
        self.assistant(
            f"Done: your account now uses {address}. We sent a verification link there; it "
            "stays valid for 24 hours."
        )

    def tech(self) -> None:
        self.user(self.rng.choice(_TECH))
        self.assistant(self.rng.choice(_TECH_STEPS))

    def small_talk(self) -> None:
        self.user(
            self.rng.choice(
                (
                    "Thanks, that helps. One more thing about delivery times to Norway?",
                    "Great. Do you also ship to Switzerland, and are there customs fees?",
                    "OK. How long do I have to return something that doesn't fit?",
                )
            )
        )
        self.assistant(
            "We ship to all of Europe. Deliveries outside the EU take four to seven business "
            "days and customs fees are shown at checkout, so nothing is added at the door. "
            "Returns are free within 30 days of delivery."
        )


def make_conversation(index: int, messages: int, seed: int, run_id: str) -> Conversation:
    """Conversation ``index`` of a run: a system prompt, then whole turns until at least
    ``messages`` messages (a tool call is never cut from its result)."""
    rng = random.Random(f"{seed}:{index}")
    writer = _Writer(rng)
    writer.messages.append({"role": "system", "content": SYSTEM_PROMPT})
    turns = (writer.track, writer.refund, writer.email_change, writer.tech, writer.small_talk)
    weights = (4, 2, 1, 2, 2)
    while len(writer.messages) < messages:
        rng.choices(turns, weights)[0]()
    context = {
        "project": {"id": "demo"},
        "workflow": {
            "id": f"demo-{run_id}-{index}",
            "input": {
                "user_id": f"u{index:04d}",
                "conversation_id": f"{run_id}-{index}",
                "session_id": f"{run_id}-{index}",
                "conv": f"{run_id}-{index}",
            },
        },
    }
    return Conversation(index, context, writer.messages)
