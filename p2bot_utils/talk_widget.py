"""The chat box of notebook 06: ipywidgets around a ``talk.ChatSession``.

Typing a message and pressing Enter (or Send) calls ``ChatWidget.send``, the very method the notebook calls
with its scripted messages under papermill / nbval, so the scripted run and a person typing take one path.
"""
from __future__ import annotations

import html
from typing import Sequence

import ipywidgets as W
from IPython.display import display

from p2bot_utils.talk import BotTurn, ChatSession, parse_persona, turn_html


class ChatWidget:
    """A persona picker (pool or typed sentences), the conversation with each reply's Eq. 3 parts and the
    Receiver's perception of you, an entry box, Send and Reset."""

    def __init__(self, session: ChatSession, pool: Sequence[Sequence[str]], persona_index: int = 0):
        self.session, self.pool = session, [tuple(p) for p in pool]
        options = [(f"#{i}: {' '.join(p)[:90]}", i) for i, p in enumerate(self.pool)]
        self.pick = W.Dropdown(options=options, value=persona_index if 0 <= persona_index < len(pool) else None,
                               description="bot persona", layout=W.Layout(width="95%"))
        self.typed = W.Textarea(placeholder="…or type the bot's persona, one sentence per line",
                                layout=W.Layout(width="95%", height="6em"))
        self.use = W.Button(description="Use typed persona")
        self.persona_view = W.HTML()
        self.log = W.HTML().add_class("p2bot-chat-log")
        self.entry = W.Text(placeholder="say something and press Enter", continuous_update=False,
                            layout=W.Layout(width="70%")).add_class("p2bot-chat-entry")
        self.send_button = W.Button(description="Send", button_style="primary").add_class("p2bot-chat-send")
        self.reset_button = W.Button(description="Reset")
        self.status = W.HTML()
        self.pick.observe(lambda ch: self.set_persona(self.pool[ch["new"]]) if ch["new"] is not None else None,
                          "value")
        self.use.on_click(lambda _: self._use_typed())
        self.entry.observe(lambda ch: self._submit(ch["new"]), "value")
        self.send_button.on_click(lambda _: self._submit(self.entry.value))
        self.reset_button.on_click(lambda _: self.reset())
        self.box = W.VBox([self.pick, self.typed, self.use, self.persona_view, self.log,
                           W.HBox([self.entry, self.send_button, self.reset_button]), self.status])
        self._show_persona()

    def _ipython_display_(self):
        display(self.box)

    def _show_persona(self) -> None:
        self.persona_view.value = ("<div style='font-size:90%'><b>The bot plays:</b> "
                                   + html.escape(" | ".join(self.session.persona)) + "</div>")

    def set_persona(self, persona: Sequence[str]) -> None:
        self.session.set_persona(persona)
        self.log.value = ""
        self._show_persona()

    def _use_typed(self) -> None:
        try:
            self.set_persona(parse_persona(self.typed.value))
            self.status.value = ""
        except ValueError as e:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"

    def reset(self) -> None:
        self.session.reset()
        self.log.value = ""

    def _submit(self, text: str) -> None:
        if text.strip():
            self.entry.value = ""
            self.send(text)

    def send(self, text: str) -> BotTurn:
        """Say ``text`` to the bot; the exchange is appended to the conversation shown."""
        self.status.value = "<i>the bot is thinking…</i>"
        try:
            turn = self.session.say(text)
        finally:
            self.status.value = ""
        self.log.value += turn_html(self.session, turn)
        return turn
