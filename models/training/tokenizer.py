"""A tiny SentencePiece-style ("llama" / SPM) character vocabulary that libllama reads natively.

Vocabulary layout (ids):
    0 <unk>, 1 <s> (BOS), 2 </s> (EOS)          control / unknown tokens
    3 .. 258   <0x00> .. <0xFF>                  byte-fallback tokens (type BYTE)
    259 ..     one piece per printable ASCII character, with ' ' written as U+2581 '▁'

There are no multi-character pieces, so llama.cpp's SPM bigram merging never merges anything and
tokenization is simply: BOS, then one token per character (' ' -> '▁'), with any character outside
the piece set (e.g. '\n') encoded as its UTF-8 bytes via <0xXX> tokens.  We write
tokenizer.ggml.add_space_prefix = false, so no leading '▁' is inserted.
This module reproduces that exactly; `check_with_llama_cpp` (used by make_all and the tests)
verifies it against libllama on every prompt/answer string we train or evaluate on.
"""
from __future__ import annotations

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPACE_PIECE = "\u2581"

# token types as in llama.cpp (llama_token_type / gguf.TokenType)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6


def _build():
    pieces = ["<unk>", "<s>", "</s>"]
    types = [TT_UNKNOWN, TT_CONTROL, TT_CONTROL]
    for b in range(256):
        pieces.append(f"<0x{b:02X}>")
        types.append(TT_BYTE)
    pieces.append(SPACE_PIECE)
    types.append(TT_NORMAL)
    for c in range(0x21, 0x7F):
        pieces.append(chr(c))
        types.append(TT_NORMAL)
    # SPM scores: only relevant for merges (there are none); give normal pieces distinct negative scores
    scores = [0.0] * len(pieces)
    for i, t in enumerate(types):
        if t == TT_NORMAL:
            scores[i] = -float(i)
    return pieces, scores, types


PIECES, SCORES, TOKEN_TYPES = _build()
N_VOCAB = len(PIECES)
_PIECE_TO_ID = {p: i for i, p in enumerate(PIECES) if TOKEN_TYPES[i] == TT_NORMAL}
_BYTE_BASE = 3


def encode(text: str, bos: bool = True, eos: bool = False) -> list[int]:
    ids = [BOS_ID] if bos else []
    for ch in text:
        p = SPACE_PIECE if ch == " " else ch
        tid = _PIECE_TO_ID.get(p)
        if tid is not None:
            ids.append(tid)
        else:
            ids.extend(_BYTE_BASE + b for b in ch.encode("utf-8"))
    if eos:
        ids.append(EOS_ID)
    return ids


def decode(ids) -> str:
    out = bytearray()
    for t in ids:
        t = int(t)
        ty = TOKEN_TYPES[t]
        if ty == TT_BYTE:
            out.append(t - _BYTE_BASE)
        elif ty == TT_NORMAL:
            out.extend(PIECES[t].replace(SPACE_PIECE, " ").encode("utf-8"))
    return out.decode("utf-8", errors="replace")


def gguf_tokenizer_metadata(writer) -> None:
    """Add the tokenizer keys to a gguf.GGUFWriter."""
    writer.add_tokenizer_model("llama")
    writer.add_token_list(PIECES)
    writer.add_token_scores(SCORES)
    writer.add_token_types(TOKEN_TYPES)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def check_with_llama_cpp(model_path: str, texts, verbose: bool = True) -> int:
    """Tokenize every text with libllama (via llama-cpp-python, vocab only) and compare with encode().

    Returns the number of mismatches (0 == identical)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    bad = 0
    for t in texts:
        ref = llm.tokenize(t.encode("utf-8"), add_bos=True, special=False)
        if list(ref) != encode(t):
            bad += 1
            if verbose and bad <= 5:
                print("tokenizer mismatch:", repr(t), list(ref), encode(t))
    llm.close() if hasattr(llm, "close") else None
    return bad
