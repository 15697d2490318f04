"""The sites' code: fedgrid's LoRA client (fedgrid.apps.llm) on one fortune file per client."""

from __future__ import annotations

from fedgrid.apps.llm import LoraClient

from . import data


class FortuneLoraClient(LoraClient):
    def texts(self):  # noqa: ANN201 - (train ids, held-out ids)
        return data.client_text(self.ctx.client)
