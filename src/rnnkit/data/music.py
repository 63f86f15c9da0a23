"""Music for the `music` task: scores read with music21, kept as plain notes, and written as
tokens on a time grid.

Built in: the Bach chorales of music21's corpus (Riemenschneider's 371, read from the files that
ship inside the music21 package; nothing is downloaded), each as its four voices, soprano, alto,
tenor and bass. Or any folder of MIDI, MusicXML, Humdrum or ABC files: a voice is a part of the
score, the top note where a part plays chords. Scores are parsed with music21's pickle cache off
(`forceSource=True`: it would otherwise unpickle files from a shared temporary folder later);
what a run keeps of them is JSON (`Piece.to_json`).

Encoding, one token per voice per sixteenth note (the grid every chorale fits; rounded elsewhere),
as in Liang's BachBot (2016):

    <end> K:G | G4 - - - A4 - - - | B4 - ...     --voices 1 (the top voice, the melody)
    <end> K:G | G4 B3 D3 G2 - - - - - - - - ...  --voices 4: S A T B of each step in turn

    a pitch (G4)  a note starts     -  the voice's note goes on    r  the voice rests
    |  a bar starts (its notes follow)   K:G, K:Em  the key (first)   <end>  a piece ends

A piece is read as `<end>` followed by its tokens and `<end>`: the model's first prediction is
the key, and its last that the piece is over. The key is estimated from the notes (Krumhansl and
Schmuckler's profiles, as music21 weighs them) and written with one spelling per pitch class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnkit.errors import RnnkitFileError, RnnkitValueError

STEPS_PER_QUARTER = 4  # the grid: sixteenth notes
END, BAR, HOLD, REST, UNK = "<end>", "|", "-", "r", "<unk>"
SPECIALS = (END, UNK, BAR, HOLD, REST)
VOICE_NAMES = ("soprano", "alto", "tenor", "bass")
SUFFIXES = (".mid", ".midi", ".mxl", ".musicxml", ".xml", ".krn", ".abc")

_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_KEY_NAMES = {  # one spelling per pitch class and mode
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_PITCH = re.compile(r"^([A-Ga-g])(#{1,2}|b{1,2}|-{1,2})?(\d)$")
_KEY = re.compile(r"^K:([A-Ga-g])(#|b)?(m?)$")


@dataclass(frozen=True)
class Piece:
    """A score as notes: per voice, (start, duration, MIDI pitch) in grid steps, sorted and not
    overlapping; `bars` the steps where bars start; `length` the steps of the whole piece."""

    name: str
    key: str  # a key token, e.g. "K:G" or "K:Em"
    length: int
    bars: tuple[int, ...]
    voices: tuple[tuple[tuple[int, int, int], ...], ...]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "key": self.key,
            "length": self.length,
            "bars": list(self.bars),
            "voices": [[list(n) for n in v] for v in self.voices],
        }

    @classmethod
    def from_json(cls, obj: dict) -> Piece:
        """A piece from `to_json`'s form, checked (a kept file may have been edited)."""
        voices = tuple(tuple((int(a), int(b), int(c)) for a, b, c in v) for v in obj["voices"])
        piece = cls(
            str(obj["name"]), str(obj["key"]), int(obj["length"]), tuple(map(int, obj["bars"])), voices
        )
        parse_key(piece.key)
        if piece.length < 1 or not voices:
            raise ValueError(f"piece {piece.name!r}: empty")
        for v in voices:
            end = 0
            for start, duration, pitch in v:
                if start < end or duration < 1 or start + duration > piece.length or not 0 <= pitch <= 127:
                    raise ValueError(f"piece {piece.name!r}: note {(start, duration, pitch)} out of place")
                end = start + duration
        return piece

    def take_voices(self, n: int) -> Piece:
        return Piece(self.name, self.key, self.length, self.bars, self.voices[:n])

    def transposed(self, semitones: int) -> Piece:
        tonic, minor = parse_key(self.key)
        voices = tuple(tuple((s, d, p + semitones) for s, d, p in v) for v in self.voices)
        return Piece(self.name, key_token((tonic + semitones) % 12, minor), self.length, self.bars, voices)

    def notes(self) -> int:
        return sum(len(v) for v in self.voices)


# --- names of pitches and keys ------------------------------------------------------------------


def pitch_name(midi: int) -> str:
    """MIDI 69 -> "A4" (sharps, or the flats of _NAMES)."""
    return f"{_NAMES[midi % 12]}{midi // 12 - 1}"


def parse_pitch(name: str) -> int | None:
    """ "A4", "F#3", "Bb5" or music21's "B-5" -> its MIDI number; None if it is not a pitch."""
    m = _PITCH.match(name)
    if not m:
        return None
    shift = {"#": 1, "##": 2, "b": -1, "bb": -2, "-": -1, "--": -2}.get(m.group(2) or "", 0)
    return _LETTERS[m.group(1).upper()] + shift + 12 * (int(m.group(3)) + 1)


def key_token(tonic: int, minor: bool) -> str:
    return f"K:{_KEY_NAMES['minor' if minor else 'major'][tonic % 12]}{'m' if minor else ''}"


def parse_key(token: str) -> tuple[int, bool]:
    """ "K:G" -> (7, False), "K:F#m" -> (6, True); an error for anything else."""
    m = _KEY.match(token)
    if not m:
        raise ValueError(f"{token!r} is not a key (K:G, K:Bb, K:F#m)")
    tonic = _LETTERS[m.group(1).upper()] + {"#": 1, "b": -1}.get(m.group(2) or "", 0)
    return tonic % 12, m.group(3) == "m"


def estimate_key(voices) -> str:
    """The key whose Krumhansl-Schmuckler profile (music21's weights) best correlates with the
    pitch classes' durations."""
    from music21.analysis.discrete import KrumhanslSchmuckler

    weights = np.zeros(12)
    for v in voices:
        for _, duration, pitch in v:
            weights[pitch % 12] += duration
    if not weights.any():
        return key_token(0, False)
    profiles = KrumhanslSchmuckler()
    best = None
    for minor, mode in ((False, "major"), (True, "minor")):
        profile = np.asarray(profiles.getWeights(mode), dtype=float)
        for tonic in range(12):
            r = np.corrcoef(weights, np.roll(profile, tonic))[0, 1]
            if best is None or r > best[0]:
                best = (r, tonic, minor)
    return key_token(best[1], best[2])


# --- reading scores -----------------------------------------------------------------------------


def chorale_paths(limit: int | None = None) -> list[tuple[str, Path]]:
    """(name, file) of the Riemenschneider chorales in music21's corpus, in its order (the first
    `limit`); where a work has several files, the MusicXML one named after it."""
    from music21 import corpus

    out, seen = [], set()
    for name in corpus.chorales.Iterator(returnType="filename"):
        if limit is not None and len(out) >= limit:
            break
        found = corpus.getWork(name)
        if isinstance(found, list):
            stem = name.split("/")[-1]
            found = sorted(found, key=lambda p: (p.stem != stem, p.suffix != ".mxl", str(p)))[0]
        if found and Path(found) not in seen:
            seen.add(Path(found))
            out.append((name.split("/")[-1], Path(found)))
    return out


def music21_version() -> str:
    import music21

    return music21.__version__


def read_score(path, voices: int) -> Piece:
    """The first `voices` voices of a score file (parts named soprano, alto, tenor and bass
    first, in that order, when the score has them): an error naming the file if it cannot be
    read or has fewer parts."""
    from music21 import converter

    path = Path(path)
    try:
        score = converter.parse(path, forceSource=True)  # forceSource: no pickle read or written
    except Exception as e:  # music21 raises many kinds for a bad file
        raise RnnkitValueError(
            f"--data: {path} is not a score music21 can read ({type(e).__name__}: {e})"
        ) from None
    parts = list(getattr(score, "parts", [])) or [score]
    named = []
    for voice in VOICE_NAMES:
        match = [
            p for p in parts if str(p.partName or p.id or "").lower().startswith(voice) and p not in named
        ]
        if match:
            named.append(match[0])
    if len(named) >= voices:
        parts = named
    if len(parts) < voices:
        raise RnnkitValueError(f"--data: {path} has {len(parts)} part(s), --voices asks for {voices}")
    try:
        notes = [_part_notes(p) for p in parts[:voices]]
    except Exception as e:  # a part music21 reads but we cannot (e.g. odd percussion)
        raise RnnkitValueError(
            f"--data: {path}: its notes cannot be read ({type(e).__name__}: {e})"
        ) from None
    length = max((s + d for v in notes for s, d, _ in v[-1:]), default=0)
    length = max(length, _steps(parts[0].highestTime))
    if not any(notes) or length < 1:
        raise RnnkitValueError(f"--data: {path} has no notes")
    bars, number = set(), None
    for m in parts[0].getElementsByClass("Measure"):
        # a bar split in two around a fermata or a repeat (4 and 4a) is one bar
        if m.number != number and not m.numberSuffix:
            bars.add(_steps(m.offset))
        number = m.number
    bars = sorted(bars & set(range(length))) or [0]
    return Piece(path.stem, estimate_key(notes), length, tuple(bars), tuple(notes))


def _steps(quarters) -> int:
    return int(round(float(quarters) * STEPS_PER_QUARTER))


def _part_notes(part) -> tuple[tuple[int, int, int], ...]:
    """A part's notes on the grid, ties merged; a chord's top note; a note cut short where the
    next one starts (rounding can make them overlap); grace notes and notes rounded to nothing
    dropped."""
    notes = []
    for n in part.stripTies().flatten().notes:
        pitches = [p.midi for p in getattr(n, "pitches", ())]
        if not pitches:  # unpitched (percussion)
            continue
        start, end = _steps(n.offset), _steps(n.offset + n.quarterLength)
        pitch = max(pitches)
        if end <= start or not 0 <= pitch <= 127:
            continue
        if notes and notes[-1][0] == start:  # two notes at once in one voice: keep the higher
            if notes[-1][2] >= pitch:
                continue
            notes.pop()
        if notes and notes[-1][0] + notes[-1][1] > start:
            notes[-1] = (notes[-1][0], start - notes[-1][0], notes[-1][2])
        notes.append((start, end - start, pitch))
    return tuple(notes)


def score_files(folder) -> list[Path]:
    """The score files of a folder (recursively), or a single score file, sorted."""
    folder = Path(folder)
    if not folder.exists():
        raise RnnkitFileError(f"--data: no such file or folder: {folder}")
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise RnnkitValueError(f"--data: {folder} holds no score files ({', '.join(SUFFIXES)})")
    return files


# --- tokens -------------------------------------------------------------------------------------


def tokens(piece: Piece) -> list[str]:
    """The piece as tokens, without the leading <end> (see the module's docstring)."""
    grid = [[REST] * piece.length for _ in piece.voices]
    for row, notes in zip(grid, piece.voices):
        for start, duration, pitch in notes:
            row[start] = pitch_name(pitch)
            row[start + 1 : start + duration] = [HOLD] * (duration - 1)
    bars = set(piece.bars)
    out = [piece.key]
    for t in range(piece.length):
        if t in bars:
            out.append(BAR)
        out.extend(row[t] for row in grid)
    return [*out, END]


def from_tokens(items: list[str], voices: int, name: str = "sample") -> Piece:
    """The notes of a token sequence (a sample: anything goes). Steps are counted by voice tokens
    (`voices` a step); a bar inside a step starts at the next one; keys after the first are
    skipped and unknown tokens count as rests; reading stops at <end>."""
    key, bars, notes = None, [], [[] for _ in range(voices)]
    current = [None] * voices  # the note a voice is holding: [start, duration, pitch]
    count = 0
    for item in items:
        if item == END:
            break
        if item.startswith("K:"):
            key = key or item
            continue
        if item == BAR:
            step = -(-count // voices)
            if not bars or bars[-1] != step:
                bars.append(step)
            continue
        step, v = divmod(count, voices)
        count += 1
        pitch = parse_pitch(item)
        if pitch is not None:
            if current[v] is not None:
                notes[v].append(tuple(current[v]))
            current[v] = [step, 1, pitch]
        elif item == HOLD and current[v] is not None:
            current[v][1] += 1
        else:  # a rest, an unknown token, or a hold with nothing to hold
            if current[v] is not None:
                notes[v].append(tuple(current[v]))
            current[v] = None
    for v in range(voices):
        if current[v] is not None:
            notes[v].append(tuple(current[v]))
    length = max(1, -(-count // voices))
    bars = [b for b in bars if b < length] or [0]
    return Piece(name, key or key_token(0, False), length, tuple(bars), tuple(tuple(v) for v in notes))


def text(items: list[str], voices: int) -> str:
    """Tokens as text: keys and bars as they are, a step's voice tokens joined by "/" (what
    `parse_text` reads back). As `from_tokens` reads them, a bar inside a step comes after it,
    and an unfinished last step is left out."""
    words, step, pending = [], [], []
    for item in items:
        if item == END:
            break
        if item == BAR or item.startswith("K:"):
            (pending if step else words).append(item)
            continue
        step.append(item)
        if len(step) == voices:
            words += ["/".join(step), *pending]
            step, pending = [], []
    return " ".join(words + pending)


def parse_text(prime: str, voices: int) -> list[str]:
    """`text`'s form back to tokens: an error naming what is wrong (a step with another number
    of voices, a word that is not a note, hold, rest, bar or key)."""
    out = []
    for word in prime.split():
        if word == BAR or word.startswith("K:"):
            if word != BAR:
                try:
                    parse_key(word)
                except ValueError as e:
                    raise RnnkitValueError(f"--prime: {e}") from None
            out.append(word)
            continue
        parts = word.split("/")
        if len(parts) != voices:
            raise RnnkitValueError(
                f"--prime: {word!r} has {len(parts)} voice(s), this run has {voices} (voices of a step "
                "joined by '/', e.g. G4/B3/D3/G2)"
            )
        for part in parts:
            pitch = parse_pitch(part)
            if pitch is None and part not in (HOLD, REST):
                raise RnnkitValueError(
                    f"--prime: {part!r} is not a note (C4, F#3, Bb5), a hold (-), a rest (r), a bar (|) "
                    "or a key (K:G, K:Em)"
                )
            out.append(part if pitch is None else pitch_name(pitch))
    return out


# --- statistics and files -----------------------------------------------------------------------


def pitch_classes(pieces) -> np.ndarray:
    """The share of each pitch class among the notes' onsets."""
    counts = np.zeros(12)
    for piece in pieces:
        for v in piece.voices:
            for _, _, pitch in v:
                counts[pitch % 12] += 1
    return counts / max(1, counts.sum())


def intervals(pieces, span: int = 12) -> np.ndarray:
    """The share of each melodic interval (semitones from one note to the next in a voice, rests
    skipped), -span..span, wider ones counted at the ends."""
    counts = np.zeros(2 * span + 1)
    for piece in pieces:
        for v in piece.voices:
            steps = np.diff(np.asarray([p for _, _, p in v], dtype=np.int64))
            np.add.at(counts, np.clip(steps, -span, span) + span, 1)
    return counts / max(1, counts.sum())


def write_score(piece: Piece, path, tempo: int = 80) -> None:
    """`piece` as a MIDI file (.mid, .midi) or MusicXML (.musicxml, .xml), through music21."""
    from music21 import meter, note, stream
    from music21 import tempo as m21tempo

    score = stream.Score()
    names = VOICE_NAMES if len(piece.voices) == 4 else [f"voice {k + 1}" for k in range(len(piece.voices))]
    meter_steps = _meter(piece)
    for k, notes in enumerate(piece.voices):
        part = stream.Part(id=names[k])
        part.partName = names[k].capitalize()
        if k == 0:
            part.insert(0, m21tempo.MetronomeMark(number=tempo))
        if meter_steps:
            part.insert(0, meter.TimeSignature(f"{meter_steps // STEPS_PER_QUARTER}/4"))
        for start, duration, pitch in notes:
            n = note.Note(pitch, quarterLength=duration / STEPS_PER_QUARTER)
            part.insert(start / STEPS_PER_QUARTER, n)
        score.insert(0, part)
    suffix = Path(path).suffix.lower()
    fmt = "midi" if suffix in (".mid", ".midi") else "musicxml"
    if fmt == "musicxml":
        score = score.makeNotation()
    score.write(fmt, fp=str(path))


def _meter(piece: Piece) -> int | None:
    """Steps per bar, when the bars are evenly spaced in whole quarters (a pickup allowed)."""
    gaps = set(np.diff(piece.bars).tolist())
    if len(gaps) == 1:
        gap = gaps.pop()
        if gap % STEPS_PER_QUARTER == 0 and 1 <= gap // STEPS_PER_QUARTER <= 12:
            return gap
    return None
