"""charlm: a character-level language model (the default task).

Data: the built-in Python documentation text (`rnnkit.data.text`) or any UTF-8 file (--data).
Training streams the text as `batch_size` parallel rows and carries the recurrent state from one
window to the next (truncated BPTT: an update every `seq_len` characters, its gradient reaching
`bptt_steps` back), resetting it when the streams wrap around.
Metric: bits per character (bpc = cross-entropy / ln 2), with compressors on the same test text as
baselines: gzip -9 and xz -9 on the test text alone, and xz's extra bits for the test text after
the training text (xz_cond_bpc).
"""

from __future__ import annotations

import copy
import gzip
import lzma
import math
from dataclasses import asdict, dataclass, replace

import torch

from rnnkit._config import (
    MAX_BATCH,
    MAX_LAYERS,
    MAX_LENGTH,
    MAX_UNITS,
    integer,
    one_of,
    option,
    rate,
    real,
    shown,
)
from rnnkit.data.text import CharVocab, TextSplits, builtin_corpus, file_corpus, read_text
from rnnkit.data.tokens import Subwords
from rnnkit.decoding import sample
from rnnkit.errors import RnnkitValueError
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.models._recurrent import drops_weights, regularizers
from rnnkit.tasks._common import (
    OnnxGraph,
    RegularizerOptions,
    Task,
    cache_size,
    cached_baseline,
    cell_option,
    data_key,
    initial_states,
    language_model_graphs,
)
from rnnkit.training.dynamic import DECAY_GRID, LR_GRID, dynamic_bits, tune
from rnnkit.training.tbptt import tbptt_step

DEFAULT_WEIGHT_DROPOUT = 0.2
# the cache's settings tried on the validation text (docs/tasks.md, charlm: 20 and 0.2 on the
# built-in text; lambda 0, no cache, when copying does not pay)
THETAS = (5.0, 10.0, 20.0, 40.0)
LAMBDAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


@dataclass(frozen=True)
class CharLMConfig(RegularizerOptions):
    cell: str = cell_option("lstm")
    # the defaults below were chosen by measurement on the built-in text, 2 cores, ~10 minutes
    # (docs/tasks.md, "charlm"): a wider layer trained briefly beats a narrower one trained long
    hidden_size: int = option(512, "units per recurrent layer", integer(1, MAX_UNITS))
    num_layers: int = option(1, "stacked recurrent layers", integer(1, MAX_LAYERS))
    embedding_dim: int = option(64, "character embedding size", integer(1, MAX_UNITS))
    dropout: float = option(0.15, "dropout on embeddings, between layers and on outputs", rate())
    embedding_dropout: float = option(
        0.0, "drop whole characters' embeddings (rows of E), one mask a step (AWD-LSTM)", rate()
    )
    seq_len: int = option(100, "k1: characters between updates (truncated BPTT)", integer(1, MAX_LENGTH))
    bptt_steps: int = option(
        0,
        "k2 >= k1: how far back each update's gradient reaches",
        integer(1, MAX_LENGTH, special={0: "k1, the sequence length"}),
    )
    batch_size: int = option(32, "parallel streams of text", integer(1, MAX_BATCH))
    weight_dropout: float | None = option(
        None,
        "DropConnect on W_hh, one mask a forward (AWD-LSTM)",
        rate(
            special={
                None: "0.2 for a cell with recurrent weights W_hh, 0 for one without (min_gru, min_lstm)"
            }
        ),
    )
    # the continuous cache (rnnkit.models._cache): in evaluation, sampling and export the model also
    # copies from the last --cache-size characters it read. Its sharpness and share are fitted on
    # the validation text at each evaluation (a text that does not repeat itself gets share 0);
    # training is the recurrent model's alone (docs/tasks.md, charlm).
    cache_size: int = option(
        2000,
        "characters the cache keeps to copy from (the model's memory of what it read)",
        # its memory is state, cache_size x hidden_size floats a stream: 10,000 x 512 is 20 MB
        integer(0, 10_000, special={0: "no cache"}),
    )
    cache_theta: float | None = option(
        None,
        "the cache's sharpness: how alike two contexts must be to copy",
        real(
            0.0, 1000.0, special={None: f"chosen on the validation text from {', '.join(map(str, THETAS))}"}
        ),
    )
    cache_lambda: float | None = option(
        None,
        "the cache's share of each prediction",
        real(0.0, 1.0, special={None: f"chosen on the validation text from {', '.join(map(str, LAMBDAS))}"}),
    )
    eval_chars: int = option(30000, "validation characters per evaluation during training", integer(2, 10**8))
    tokens: str = option(
        "char",
        "a step: a character, or a BPE subword (bpc stays bits per character of the text); "
        "not words, whose unknown ones would cost no bits for their spelling",
        one_of("char", "bpe"),
    )
    vocab_size: int = option(2000, "--tokens bpe: the most subwords kept", integer(2, 10**6))

    # runs saved before the cache existed read as they were trained
    SAVED_BEFORE = {"cache_size": 0}

    def __post_init__(self):
        super().__post_init__()
        if 0 < self.bptt_steps < self.seq_len:
            raise RnnkitValueError(
                f"{shown('bptt_steps')} must be 0 or at least {shown('seq_len')} ({self.seq_len}): "
                f"k2 >= k1, got {self.bptt_steps}"
            )


class CharLMTask(Task):
    name = "charlm"
    metric = "bpc"
    loss_unit = "cross-entropy (nats per character)"
    evaluate_options = ("dynamic",)
    sample_options = ("cache",)
    # cosine decay to 0 at the last step; early stopping for texts small enough to overfit
    train_defaults = {"steps": 2000, "lr": 3e-3, "schedule": "cosine", "eval_every": 250, "patience": 4}

    def __init__(self, config: CharLMConfig, *, data: str | None = None, saved: dict | None = None):
        self.config = config
        self.splits: TextSplits = builtin_corpus() if data is None else file_corpus(data)
        saved = saved or {}
        if config.tokens == "bpe":
            self.vocab = (
                Subwords.restore(saved["tokenizer"])
                if "tokenizer" in saved
                else Subwords.train("bpe", self.splits.train.splitlines(keepends=True), config.vocab_size)
            )
        else:
            vocab = saved.get("vocab")
            self.vocab = CharVocab(self.splits.train) if vocab is None else CharVocab.restore(vocab)
        self.train_ids = self.vocab.encode(self.splits.train)
        window = max(config.seq_len, config.bptt_steps) + 1  # what one training step reads
        if len(self.train_ids) < window:
            unit = "characters" if config.tokens == "char" else "subwords"
            raise RnnkitValueError(
                f"the training text has {len(self.train_ids)} {unit}, fewer than one window of "
                f"{window} (--seq-len / --bptt-steps plus 1): give more text or a shorter --seq-len"
            )

    def describe(self) -> dict:
        described = {"task": self.name, "task_config": asdict(self.config)}
        if isinstance(self.vocab, Subwords):
            return described | {"tokenizer": self.vocab.state()}
        return described | {"vocab": self.vocab.chars}

    def bits_per_char(self, text: str, ids: torch.Tensor, bits_per_token: float) -> float:
        """Bits per character of `text` from the model's mean bits per token over its `ids`:
        times tokens per character (1 for characters), so subword models compare with
        character models and the compressors."""
        return bits_per_token * len(ids) / max(1, len(text))

    @property
    def weight_dropout(self) -> float:
        """--weight-dropout, or its default for the cell (measured with the LSTM; docs/tasks.md)."""
        if self.config.weight_dropout is not None:
            return self.config.weight_dropout
        return DEFAULT_WEIGHT_DROPOUT if drops_weights(self.config.cell) else 0.0

    def build_model(self) -> LanguageModel:
        c = self.config
        return LanguageModel(
            LanguageModelConfig(
                len(self.vocab),
                embedding_dim=c.embedding_dim,
                hidden_size=c.hidden_size,
                num_layers=c.num_layers,
                cell=c.cell,
                dropout=c.dropout,
                embedding_dropout=c.embedding_dropout,
                cache_size=c.cache_size,
                # first values; evaluate fits those not given on the validation text
                cache_theta=20.0 if c.cache_theta is None else c.cache_theta,
                cache_lambda=0.2 if c.cache_lambda is None else c.cache_lambda,
                **regularizers(replace(c, weight_dropout=self.weight_dropout)),
            )
        )

    # --- training -----------------------------------------------------------------------------

    def batches(self, step: int):
        """Step i's window of the parallel streams (k2 + 1 characters starting at i * k1 past the
        pass's shift), and whether it starts them over."""
        k1 = self.config.seq_len
        k2 = max(k1, self.config.bptt_steps)
        N = len(self.train_ids)
        # as many parallel streams as hold a whole window each, up to --batch-size
        B = min(self.config.batch_size, (N - 1) // (k2 + 1) or 1)
        per_stream = (N - 1) // B
        windows = max(1, (per_stream - 1 - (k2 - k1)) // k1)  # every window inside its stream
        epoch, i = divmod(step, windows)
        # each pass over the text starts its streams elsewhere (the text read as a ring), so the
        # windows' edges, where the gradient is cut and the state starts over, move from pass
        # to pass: the same text in new contexts. The golden ratio spreads the shifts evenly.
        shift = int(N * ((epoch * 0.6180339887498949) % 1.0))
        starts = torch.arange(B) * per_stream + shift + i * k1
        tokens = self.train_ids[(starts[:, None] + torch.arange(k2 + 1)) % N]  # (B, k2 + 1)
        return tokens, i == 0, k1

    @staticmethod
    def step_fn(model, batch, state):
        tokens, restart, k1 = batch
        return tbptt_step(model, tokens[:, :-1], tokens[:, 1:], None if restart else state, k1)

    def trivial(self) -> tuple[float, str]:
        val = self.splits.val[: self.config.eval_chars]
        bits = self.bits_per_char(val, self.vocab.encode(val), math.log2(len(self.vocab)))
        unit = "characters" if self.config.tokens == "char" else "subwords"
        return bits, f"a uniform guess over {len(self.vocab)} {unit}"

    def evaluate(self, model) -> dict:
        """Validation bpc; with a cache, its settings not given as flags are fitted first on the
        same characters (the weights kept at the best evaluation keep the settings fitted there)."""
        val = self.splits.val[: self.config.eval_chars]
        ids = self.vocab.encode(val)
        if not cache_size(model):
            return {"bpc": self.bits_per_char(val, ids, bits_per_char(model, ids))}
        c = self.config
        thetas = THETAS if c.cache_theta is None else (c.cache_theta,)
        lambdas = LAMBDAS if c.cache_lambda is None else (c.cache_lambda,)
        bits = fit_cache(model, ids, thetas, lambdas)
        return {
            "bpc": self.bits_per_char(val, ids, bits),
            "cache_theta": model.cache_theta.item(),
            "cache_lambda": model.cache_lambda.item(),
        }

    # --- the commands ---------------------------------------------------------------------------

    def test_metrics(self, model, data: str | None = None, dynamic: bool = False, **options) -> dict:
        """bpc on the test text against the compressors' figures; with `dynamic`, also
        bpc_dynamic: dynamic evaluation (rnnkit.training.dynamic) with the learning rate and decay
        chosen on the validation text (RUN_DIR/dynamic.json, chosen once per weights)."""
        test = self.splits.test if data is None else read_text(data)
        ids = self.vocab.encode(test)
        metrics = {"bpc": self.bits_per_char(test, ids, bits_per_char(model, ids))}
        if cache_size(model):  # what the cache adds, in plain sight
            alone = without_cache(model)
            metrics["bpc_without_cache"] = self.bits_per_char(test, ids, bits_per_char(alone, ids))
            metrics |= {"cache_theta": model.cache_theta.item(), "cache_lambda": model.cache_lambda.item()}
        if dynamic:
            chosen = self.dynamic_settings(model)
            bits = dynamic_bits(
                model, ids, lr=chosen["lr"], decay=chosen["decay"], segment=self.config.seq_len
            )
            metrics |= {
                "bpc_dynamic": self.bits_per_char(test, ids, bits),
                "dynamic_lr": chosen["lr"],
                "dynamic_decay": chosen["decay"],
            }
        # the run's own test text: the compressors' figures are computed once (xz over a long
        # training text takes a while) and kept in RUN_DIR/baseline.json
        compressors = (
            cached_baseline(
                self.run_dir,
                data_key([self.splits.train, test]),
                lambda: compressor_bits(self.splits.train, test),
                _finite_figures,
            )
            if data is None
            else compressor_bits(self.splits.train, test)
        )
        return {**metrics, **{k: v for k, v in compressors.items() if k != "key"}, "test_chars": len(test)}

    def dynamic_settings(self, model) -> dict:
        """Dynamic evaluation's lr and decay for these weights, chosen on (up to --eval-chars of)
        the validation text and kept in RUN_DIR/dynamic.json, keyed by the weights, the text and
        the grids searched (a changed grid chooses again)."""
        val = self.vocab.encode(self.splits.val[: self.config.eval_chars])
        weights = [t.detach().cpu().float().numpy() for t in model.state_dict().values()]

        def score(lr, decay):
            return dynamic_bits(model, val, lr=lr, decay=decay, segment=self.config.seq_len)

        def valid(saved) -> bool:
            return all(isinstance(saved.get(k), (int, float)) and saved[k] >= 0 for k in ("lr", "decay"))

        return cached_baseline(
            self.run_dir,
            data_key(val.numpy(), *weights, [repr(LR_GRID), repr(DECAY_GRID)]),
            lambda: tune(score),
            valid,
            "dynamic.json",
        )

    def sample(
        self,
        model,
        *,
        prime: str,
        length: int,
        temperature: float,
        top_k,
        top_p,
        seed: int,
        cache: bool = False,
    ) -> str:
        """`prime` continued by `length` drawn tokens, from the recurrent model alone unless `cache`:
        in a sample the cache would copy the model's own text, its slips included (docs/tasks.md,
        charlm: misspelt words at temperature 0.8), while in evaluation it copies the text read."""
        if not cache and cache_size(model):
            model = without_cache(model)
        device = next(model.parameters()).device
        prefix = self.vocab.encode(prime or "\n")[None].to(device)
        out = sample(
            model.step,
            prefix,
            length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=torch.Generator(device=device).manual_seed(seed),  # draws on the model's device
        )
        if isinstance(self.vocab, Subwords):  # subwords: what the sample adds to the prime's text
            head = self.vocab.decode(prefix[0].tolist())
            whole = self.vocab.decode(prefix[0].tolist() + out[0].tolist())
            return (prime or "") + whole[len(head) :]
        return (prime or "") + self.vocab.decode(out[0])

    def tensorboard_text(self, model) -> dict[str, str]:
        """A sample at temperature 0.8 from a newline (its own seeded generator: the training's
        random state is untouched), as a code block so TensorBoard keeps the line breaks."""
        text = self.sample(model, prime="", length=300, temperature=0.8, top_k=None, top_p=None, seed=0)
        return {"sample": "    " + text.replace("\n", "\n    ")}

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        return language_model_graphs(
            model,
            "ids of `vocabulary` (unknown characters: unknown_id)",
            "of the next character",
        )

    def onnx_files(self) -> dict[str, str]:
        return {"tokenizer": self.vocab.json_text()} if isinstance(self.vocab, Subwords) else {}

    def onnx_metadata(self, model) -> dict:
        vocabulary = (
            [self.vocab.token(i) for i in range(len(self.vocab))]
            if isinstance(self.vocab, Subwords)
            else self.vocab.chars
        )
        return {
            "tokens": self.config.tokens,
            "vocabulary": vocabulary,
            "unknown_id": 0,
            # the states to start from: (num_layers, size) each, the same for every sequence
            "initial_state": [s[:, 0].tolist() for s in initial_states(model, 1)],
        }

    def predict_values(self, model, inputs: list[str], **options) -> list[str]:
        """Each input continued by 100 sampled characters (seed 0)."""
        return [
            self.sample(model, prime=text, length=100, temperature=1.0, top_k=None, top_p=None, seed=0)
            for text in inputs
        ]


def without_cache(model):
    """The same model (the same modules and weights, not copied) predicting without its cache."""
    alone = copy.copy(model)
    alone.config = replace(model.config, cache_size=0)
    return alone


def _finite_figures(saved: dict) -> bool:
    """A kept compressors' record is used only when it holds their three figures as numbers."""
    return all(
        isinstance(saved.get(k), (int, float)) and math.isfinite(saved[k])
        for k in ("gzip_bpc", "xz_bpc", "xz_cond_bpc")
    )


def compressor_bits(train: str, test: str) -> dict:
    """Bits per character of `test` by gzip -9 and xz -9 alone, and xz's extra bits for it after
    `train` (what a compressor that read the training text first needs: xz_cond_bpc)."""
    n = len(test)
    train_xz = len(lzma.compress(train.encode(), preset=9))
    return {
        "gzip_bpc": 8 * len(gzip.compress(test.encode(), 9)) / n,
        "xz_bpc": 8 * len(lzma.compress(test.encode(), preset=9)) / n,
        "xz_cond_bpc": 8 * (len(lzma.compress((train + test).encode(), preset=9)) - train_xz) / n,
    }


def bits_per_char(model, ids: torch.Tensor, streams: int = 16, chunk: int = 256) -> float:
    """Average -log2 p(next char) over `ids`, read as `streams` parallel rows with the state
    carried across chunks (each row starts from a zero state)."""
    if len(ids) < 2:
        return float("nan")
    return -log_probs(model, ids, streams, chunk).mean().item() / math.log(2)


@torch.no_grad()
def log_probs(model, ids: torch.Tensor, streams: int = 16, chunk: int = 256) -> torch.Tensor:
    """ln p(next char) at each position of `ids` read as `bits_per_char` reads them (float64)."""
    model.eval()
    streams = max(1, min(streams, (len(ids) - 1) // 8))
    per = (len(ids) - 1) // streams
    rows = torch.stack([ids[s * per : s * per + per + 1] for s in range(streams)])  # (S, per + 1)
    rows = rows.to(next(model.parameters()).device)
    out, state = [], None
    for start in range(0, per, chunk):
        x = rows[:, start : min(start + chunk, per) + 1]
        logits, state = model(x[:, :-1], state)
        out.append(logits.log_softmax(-1).gather(-1, x[:, 1:, None])[..., 0].double().flatten().cpu())
    return torch.cat(out)


@torch.no_grad()
def fit_cache(model, ids: torch.Tensor, thetas=THETAS, lambdas=LAMBDAS) -> float:
    """Sets `model`'s cache_theta and cache_lambda to the pair of the grid that reads `ids` (held-out
    text) in the fewest bits, and returns those bits per token."""
    if len(ids) < 2:
        return float("nan")
    bits, theta, lam = min(cache_grid(model, ids, thetas, lambdas))
    model.cache_theta.fill_(theta)
    model.cache_lambda.fill_(lam)
    return bits


@torch.no_grad()
def cache_grid(model, ids: torch.Tensor, thetas=THETAS, lambdas=LAMBDAS) -> list[tuple[float, float, float]]:
    """(bits per token, theta, lambda) of `ids` for each pair of the grid (lambda 0: the model alone),
    the model's own settings left as they were. One read without the cache gives p_model, one per
    theta with lambda = 1 gives p_cache (p_model where the memory is empty), and every lambda is
    their mixture (1 - lambda) p_model + lambda p_cache, as the cache computes it."""
    plain = log_probs(without_cache(model), ids)
    theta0, lambda0 = model.cache_theta.clone(), model.cache_lambda.clone()
    tried = [(-plain.mean().item(), theta0.item(), 0.0)] if 0.0 in lambdas else []
    try:
        for theta in thetas if any(lambdas) else ():
            model.cache_theta.fill_(theta)
            model.cache_lambda.fill_(1.0)
            cache = log_probs(model, ids)
            for lam in (lam for lam in lambdas if lam > 0):
                mixed = (
                    cache if lam == 1 else torch.logaddexp(plain + math.log1p(-lam), cache + math.log(lam))
                )
                tried.append((-mixed.mean().item(), theta, lam))
    finally:
        model.cache_theta.copy_(theta0)
        model.cache_lambda.copy_(lambda0)
    return [(nats / math.log(2), theta, lam) for nats, theta, lam in tried]
