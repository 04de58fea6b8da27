"""``choice_loglik`` mode (lm-evaluation-harness style): one ``(context, continuation)`` row
per (question, choice), row ``question * C + choice``; the logit of a choice is the summed
log-probability of its continuation tokens. The LM head runs only at the positions that
predict continuation tokens. ``choice_loglik_mean`` is the same with the sum divided by the
number of continuation tokens, so that long answers are not penalised for their length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.scoring import tokens
from bslora_pyro.scoring.batch import EncodedBatch, ScoringError
from bslora_pyro.scoring.draws import draw_grouped
from bslora_pyro.scoring.modes.base import EncodingSettings, ScoringMode
from bslora_pyro.scoring.network import gather_positions, output_head, repeat
from bslora_pyro.scoring.prefix import PackedRows

Row = tuple[list[int], int]  # context + continuation ids, number of scored tokens at the end


def scored_slots(batch: EncodedBatch) -> tuple[Tensor, Tensor]:
    """The scored continuation tokens of a ``choice_loglik`` batch, question by question:
    ``[B, N]`` indices ``choice * K + k`` into a question's ``[C, K]`` target slots (real ones
    first, choice-major; ``N`` the most any question has) and which of them are real."""
    num_questions = batch.num_examples
    mask = batch.target_mask.reshape(num_questions, -1)
    counts = mask.sum(1)
    width = max(1, int(counts.max()))
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device) < counts[:, None]
    return order, valid


def token_log_probs(head: nn.Module, states: Tensor, targets: Tensor) -> Tensor:
    """``log p(target)`` ``[..., n]`` under ``head`` (float32) at the states ``[..., n, H]``."""
    log_probs = head(states).float().log_softmax(dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _tokenize_unique(tokenizer: Any, texts: Sequence[str]) -> dict[str, list[int]]:
    """Token ids (no special tokens) of each distinct text, in one tokenizer call."""
    unique = sorted(set(texts))
    if not unique:
        return {}
    encoded = tokenizer(unique, add_special_tokens=False)["input_ids"]
    return {text: list(ids) for text, ids in zip(unique, encoded, strict=True)}


def _prefix_id(scorer: EncodingSettings) -> int:
    """The token standing in for an empty context."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(scorer.tokenizer, name, None)
        if value is not None:
            return int(value)
    return scorer.pad_id


def _loglik_row(scorer: EncodingSettings, context: list[int], continuation: list[int], uid: str) -> Row:
    if not continuation:
        raise ScoringError(f"example {uid!r}: a continuation has no tokens")
    if not context:
        context = [_prefix_id(scorer)]
    full = (context + continuation)[-(scorer.max_length + 1) :]
    return full, min(len(continuation), len(full) - 1)


def _loglik_rows(
    scorer: EncodingSettings, examples: list[MultipleChoiceExample], num_choices: int
) -> list[Row | None]:
    """Per row ``question * C + choice``: (context + continuation ids, number of scored
    tokens at the end), or None for a missing choice."""
    pairs = []
    for ex in examples:
        for context, continuation in ex.loglik_pairs:
            # lm-eval: trailing whitespace of the context moves to the continuation.
            stripped = context.rstrip()
            pairs.append((stripped, context[len(stripped) :] + continuation))
    table = _tokenize_unique(scorer.tokenizer, [text for pair in pairs for text in pair])
    rows: list[Row | None] = []
    pair_iter = iter(pairs)
    for ex in examples:
        for choice in range(num_choices):
            if choice >= ex.num_choices:
                rows.append(None)
                continue
            context, continuation = next(pair_iter)
            rows.append(_loglik_row(scorer, table[context], table[continuation], ex.uid))
    return rows


class LoglikMode(ScoringMode):
    name = "choice_loglik"
    shares_context = True

    def check_example(self, ex: MultipleChoiceExample) -> None:
        if len(ex.loglik_pairs) != ex.num_choices:
            raise ScoringError(
                f"example {ex.uid!r}: {len(ex.loglik_pairs)} loglik pairs for "
                f"{ex.num_choices} choices"
            )

    def encode(self, scorer: EncodingSettings, examples: list[MultipleChoiceExample]) -> EncodedBatch:
        num_choices, labels, choice_mask = tokens.common(examples)
        rows = _loglik_rows(scorer, examples, num_choices)
        seqs = [row[0][:-1] if row is not None else [scorer.pad_id] for row in rows]
        side = scorer.padding_side
        ids, mask, width = tokens.pad(seqs, scorer.pad_id, side)
        k_max = max([1] + [row[1] for row in rows if row is not None])
        positions = torch.zeros((len(rows), k_max), dtype=torch.long)
        targets = torch.zeros((len(rows), k_max), dtype=torch.long)
        target_mask = torch.zeros((len(rows), k_max), dtype=torch.bool)
        for r, row in enumerate(rows):
            if row is None:
                continue
            full, k = row
            end = tokens.offset(len(full) - 1, width, side) + len(full) - 1
            positions[r, :k] = torch.arange(end - k, end)
            targets[r, :k] = torch.tensor(full[-k:], dtype=torch.long)
            target_mask[r, :k] = True
        return self.token_batch(
            examples,
            (ids, mask),
            labels,
            choice_mask,
            target_positions=positions,
            target_ids=targets,
            target_mask=target_mask,
        )

    def pick(
        self, batch: EncodedBatch, hidden: Tensor, num_draws: int, packed: PackedRows | None = None
    ) -> Tensor:
        """Per question the ``N`` positions predicting its continuation tokens ``[D * B, N, H]``
        (see :func:`scored_slots`; from packed rows ``[D * B, L, H]`` when ``packed``)."""
        positions = self.columns(batch, hidden.shape[1], packed)  # [B, N]
        hidden = hidden.reshape(positions.shape[0] * num_draws, -1, hidden.shape[-1])
        return gather_positions(hidden, positions, num_draws)

    def columns(self, batch: EncodedBatch, width: int, packed: PackedRows | None) -> Tensor:
        """Per question, the columns ``[B, N]`` of its scored slots in its packed row, or in
        its ``C`` rows of ``width`` laid end to end."""
        order, _ = scored_slots(batch)
        if packed is not None:
            return packed.columns(batch.target_positions).gather(1, order)
        positions = batch.target_positions.reshape(batch.num_examples, -1).gather(1, order)
        return order // batch.target_positions.shape[-1] * width + positions

    def head(self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int) -> Tensor:
        """Summed continuation log-probabilities ``[D * R]`` from the states ``[D * B, N, H]``
        of each question's scored slots. When the head treats a draw's rows alike it runs on
        the real slots alone, ``[D, n, H]``."""
        order, valid = scored_slots(batch)
        targets = batch.target_ids.reshape(batch.num_examples, -1).gather(1, order)
        head = output_head(model)
        if draw_grouped(head, num_draws):
            real = valid.reshape(-1)
            states = picked.reshape(num_draws, real.numel(), -1)[:, real]
            chosen = token_log_probs(head, states, targets[valid].expand(num_draws, -1))
            log_probs = chosen.new_zeros(num_draws, real.numel())
            log_probs[:, real] = chosen
            log_probs = log_probs.view(-1, valid.shape[1])
        else:
            log_probs = token_log_probs(head, picked, repeat(targets, num_draws))
            log_probs = log_probs.masked_fill(~repeat(valid, num_draws), 0)
        choices = repeat(order // batch.target_ids.shape[-1], num_draws)
        scores = log_probs.new_zeros(choices.shape[0], batch.num_choices)
        return scores.scatter_add(1, choices, log_probs).reshape(-1)


class MeanLoglikMode(LoglikMode):
    """``choice_loglik`` with the mean log-probability per continuation token as the logit."""

    name = "choice_loglik_mean"

    def head(self, model: Any, batch: EncodedBatch, picked: Tensor, num_draws: int) -> Tensor:
        """:meth:`LoglikMode.head`'s sums divided by each choice's number of scored tokens."""
        sums = super().head(model, batch, picked, num_draws).view(-1, batch.num_choices)
        counts = batch.target_mask.reshape(batch.num_examples, batch.num_choices, -1).sum(-1)
        return (sums / repeat(counts.clamp(min=1), num_draws).to(sums.dtype)).reshape(-1)
