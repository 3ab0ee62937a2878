// The tokenizer of crates/tokenizer in a browser tab: text to the ids
// llama.cpp's `llama_tokenize` gives, ids back to text. The Rust side
// resolves everything from the GGUF once (vocabulary, attributes, special
// tokens, merges or scores, pre-tokenizer regexes) and writes it as JSON
// (crates/tokenizer/src/export.rs, format `shardload-tokenizer/1`); this
// module only applies those rules, as the Rust code does, step for step:
//
// - special.rs: special tokens written in the text are cut out first;
// - bpe.rs and pre.rs: byte-level BPE after the pre-tokenizer regexes;
// - spm.rs: sentencepiece-style merges by score, with byte fallback.
//
// Rust works on bytes; here a byte string is a "binary string" (one char
// per byte, codes 0-255), so token texts, which may be looked up by any run
// of bytes, are Map keys exactly as the Rust `token_to_id` keys are.
//
// No build step, no dependencies: an ES module a page (or Node) imports as it is.

const FORMAT = 'shardload-tokenizer/1';

/** Token attribute bits, as crates/tokenizer/src/lib.rs `attr` (and the JSON `attrs`). */
const UNKNOWN = 1;
const CONTROL = 8;

/** A byte-level BPE byte without a token: dropped, as llama.cpp drops it. */
const MISSING = -1;

/** `▁` (U+2581), sentencepiece's space, as a binary string of its UTF-8 bytes. */
const SPM_SPACE = '\xE2\x96\x81';

const utf8Encoder = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf16Decoder = new TextDecoder('utf-16le', { ignoreBOM: true });

/**
 * A model's tokenizer, built from the JSON `Tokenizer::to_json` writes, giving
 * the ids crates/tokenizer (and so llama.cpp) gives, so a page can build a
 * prompt and read a reply without a round trip to a server. Build it once per
 * model: every table is made in the constructor.
 */
export class Tokenizer {
  #attrs;
  /** Every piece's bytes, concatenated; `#pieceEnds[i]` ends piece i. */
  #pieceBytes;
  #pieceEnds;
  #specials;
  #bos;
  #eos;
  #eot;
  #eog;
  #addBos;
  #addEos;
  /** The Bpe or the Spm: `encode(fragment bytes, afterSpecial, out)`. */
  #model;

  /**
   * Throws on a JSON of another format or an inconsistent one: the JSON is the
   * whole tokenizer, so a wrong or stale file must fail here, not give wrong ids later.
   * @param {object} data the parsed `shardload-tokenizer/1` JSON
   */
  constructor(data) {
    if (data?.format !== FORMAT) {
      throw new Error(`not a shardload tokenizer: format is ${JSON.stringify(data?.format)}, expected "${FORMAT}"`);
    }
    const n = data.texts.length;
    for (const key of ['pieces', 'attrs']) {
      if (data[key]?.length !== n) throw new Error(`${FORMAT}: ${data[key]?.length} ${key} for ${n} tokens`);
    }
    this.#attrs = Uint8Array.from(data.attrs);
    ({ bytes: this.#pieceBytes, ends: this.#pieceEnds } = concatenate(data.pieces));
    const texts = concatenate(data.texts);
    const allTexts = binaryString(texts.bytes);
    const textOf = (id) => allTexts.slice(id === 0 ? 0 : texts.ends[id - 1], texts.ends[id]);
    this.#specials = new Specials(data.specials, textOf);
    this.#bos = data.bos ?? null;
    this.#eos = data.eos ?? null;
    this.#eot = data.eot ?? null;
    this.#eog = new Set(data.eog);
    this.#addBos = Boolean(data.add_bos);
    this.#addEos = Boolean(data.add_eos);
    // As the Rust load(): an id to add must exist.
    if (this.#addBos && this.#bos === null) throw new Error(`${FORMAT}: add_bos without a bos id`);
    if (this.#addEos && this.#eos === null) throw new Error(`${FORMAT}: add_eos without an eos id`);
    if (data.kind === 'bpe') this.#model = new Bpe(data, textOf);
    else if (data.kind === 'spm') this.#model = new Spm(data, textOf);
    else throw new Error(`${FORMAT}: unknown tokenizer kind ${JSON.stringify(data.kind)} (expected "bpe" or "spm")`);
  }

  /**
   * Token ids of `input`, as llama.cpp's `llama_tokenize(text, add_special,
   * parse_special)`: what the model must be given for this text.
   * - addSpecial: BOS first and EOS last where the model says so.
   * - parseSpecial: control tokens written in the text (`<|im_start|>`) become
   *   their ids; without it they are plain text. User-defined tokens always match.
   * Any bytes are tokenizable (invalid UTF-8 as crates/tokenizer reads it).
   * @param {string | Uint8Array} input text (encoded as UTF-8) or raw bytes
   * @returns {number[]}
   */
  encode(input, addSpecial = true, parseSpecial = true) {
    let bytes;
    if (typeof input === 'string') bytes = utf8Encoder.encode(input);
    else if (input instanceof Uint8Array) bytes = input;
    else throw new TypeError('encode takes a string or a Uint8Array');
    const out = [];
    if (addSpecial && this.#addBos) out.push(this.#bos);
    // The space prefix (sentencepiece) goes at the start and after each special token.
    let afterSpecial = true;
    for (const fragment of this.#specials.partition(bytes, parseSpecial, this.#attrs)) {
      if (fragment.token !== undefined) {
        out.push(fragment.token);
        afterSpecial = true;
      } else {
        this.#model.encode(bytes.subarray(fragment.start, fragment.end), afterSpecial, out);
        afterSpecial = false;
      }
    }
    if (addSpecial && this.#addEos) out.push(this.#eos);
    return out;
  }

  /**
   * The bytes a token stands for, as `llama_token_to_piece` with special =
   * true: control tokens give their text, byte tokens their byte, so a piece
   * may be part of a UTF-8 character. A copy, the caller may keep it.
   * @returns {Uint8Array}
   */
  piece(id) {
    this.#check(id);
    return this.#pieceBytes.slice(id === 0 ? 0 : this.#pieceEnds[id - 1], this.#pieceEnds[id]);
  }

  /**
   * The bytes a run of ids decodes to: their pieces, control and unknown
   * tokens left out, since they are markers for the model, not text.
   * @returns {Uint8Array}
   */
  decode(ids) {
    const parts = [];
    let length = 0;
    for (const id of ids) {
      if (this.#isHidden(id)) continue;
      const start = id === 0 ? 0 : this.#pieceEnds[id - 1];
      parts.push(this.#pieceBytes.subarray(start, this.#pieceEnds[id]));
      length += this.#pieceEnds[id] - start;
    }
    const out = new Uint8Array(length);
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  /**
   * A streaming decoder for generation: `push(id)` gives the text this token
   * completes, in whole UTF-8 characters only (a character split across byte
   * tokens comes out once complete; bytes that can never be valid become
   * U+FFFD), control tokens print nothing; `finish()` gives what is left (an
   * unfinished character as U+FFFD). As the Rust `Decoder`: the WHATWG UTF-8
   * decoder in streaming mode replaces the same maximal invalid subparts as
   * Rust's `from_utf8` / `from_utf8_lossy`, and keeps an incomplete tail.
   * @returns {{push(id: number): string, finish(): string}}
   */
  decoder() {
    const utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
    return {
      push: (id) => (this.#isHidden(id) ? '' : utf8.decode(this.piece(id), { stream: true })),
      finish: () => utf8.decode(),
    };
  }

  /** Whether generating this token ends generation (EOS, EOT, `<|im_end|>` ...): where a reply stops. */
  isEog(id) {
    return this.#eog.has(id);
  }

  /** Whether a token is a control token (BOS, `<end_of_turn>`): a marker for the model, never shown as text. */
  isControl(id) {
    this.#check(id);
    return (this.#attrs[id] & CONTROL) !== 0;
  }

  /** The BOS id, or null if the model has none. */
  get bos() {
    return this.#bos;
  }

  /** The EOS id, or null if the model has none. */
  get eos() {
    return this.#eos;
  }

  /** The end-of-turn id (where a chat reply stops), or null. */
  get eot() {
    return this.#eot;
  }

  /** The vocabulary size: ids are 0 to nTokens - 1. */
  get nTokens() {
    return this.#attrs.length;
  }

  /** Whether `encode` with addSpecial starts with BOS (so a chat template must not add another). */
  get addsBos() {
    return this.#addBos;
  }

  /** Whether a token decodes to nothing: control and unknown tokens. */
  #isHidden(id) {
    this.#check(id);
    return (this.#attrs[id] & (CONTROL | UNKNOWN)) !== 0;
  }

  #check(id) {
    if (!(Number.isInteger(id) && id >= 0 && id < this.#attrs.length)) {
      throw new RangeError(`token id ${id} is out of range: the vocabulary has ${this.#attrs.length} tokens`);
    }
  }
}

/**
 * Special tokens written in the text, found as special.rs finds them (llama.cpp's
 * `tokenizer_st_partition`): every occurrence of every eligible token, taken
 * by priority (longest text first, ties by id; the JSON `specials` order),
 * then leftmost, each claiming its bytes unless an earlier claim overlaps.
 */
class Specials {
  /** A trie over the specials' bytes: {next: Map<byte, node>, ranks: priorities ending here}. */
  #root = { next: new Map(), ranks: null };
  #ids;
  #lengths;

  constructor(ids, textOf) {
    this.#ids = Int32Array.from(ids);
    this.#lengths = new Int32Array(ids.length);
    ids.forEach((id, rank) => {
      const text = textOf(id);
      this.#lengths[rank] = text.length;
      let node = this.#root;
      for (let i = 0; i < text.length; i++) {
        const byte = text.charCodeAt(i);
        let child = node.next.get(byte);
        if (child === undefined) {
          child = { next: new Map(), ranks: null };
          node.next.set(byte, child);
        }
        node = child;
      }
      (node.ranks ??= []).push(rank);
    });
  }

  /**
   * The fragments of `bytes`, in order: {start, end} for plain text, {token}
   * for a special token. Without parseSpecial only user-defined tokens match
   * (control and unknown ones are text then), as llama.cpp.
   */
  partition(bytes, parseSpecial, attrs) {
    // Every eligible occurrence as priority * 2^32 + start, so sorting numbers
    // orders them by priority, then position.
    const found = [];
    for (let start = 0; start < bytes.length; start++) {
      let node = this.#root;
      for (let i = start; i < bytes.length; i++) {
        node = node.next.get(bytes[i]);
        if (node === undefined) break;
        if (node.ranks === null) continue;
        for (const rank of node.ranks) {
          if (parseSpecial || (attrs[this.#ids[rank]] & (CONTROL | UNKNOWN)) === 0) found.push(rank * 2 ** 32 + start);
        }
      }
    }
    if (found.length === 0) return bytes.length === 0 ? [] : [{ start: 0, end: bytes.length }];
    const claimedBytes = new Uint8Array(bytes.length);
    const claims = [];
    for (const key of Float64Array.from(found).sort()) {
      const rank = Math.floor(key / 2 ** 32);
      const start = key - rank * 2 ** 32;
      const end = start + this.#lengths[rank];
      if (claimedBytes.subarray(start, end).includes(1)) continue;
      claimedBytes.fill(1, start, end);
      claims.push({ start, end, token: this.#ids[rank] });
    }
    claims.sort((a, b) => a.start - b.start);
    const fragments = [];
    let at = 0;
    for (const claim of claims) {
      if (claim.start > at) fragments.push({ start: at, end: claim.start });
      fragments.push({ token: claim.token });
      at = claim.end;
    }
    if (at < bytes.length) fragments.push({ start: at, end: bytes.length });
    return fragments;
  }
}

/**
 * GPT-2's byte alphabet (bpe.rs `byte_char`): printable bytes stand for
 * themselves, the others for the code points from U+0100 on, in byte order.
 * Indexed by byte: the binary string of that character's UTF-8.
 */
const BYTE_CHAR_TEXT = (() => {
  const printable = (b) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const texts = [];
  let others = 0;
  for (let b = 0; b < 256; b++) {
    const char = String.fromCharCode(printable(b) ? b : 0x100 + others++);
    texts.push(binaryString(utf8Encoder.encode(char)));
  }
  return texts;
})();

/**
 * Byte-level BPE, as bpe.rs (llama.cpp's `llm_tokenizer_bpe`): the text is cut
 * into words by the pre-tokenizer regexes, each word's bytes are spelled in
 * GPT-2's byte alphabet, and adjacent symbols are merged by merge rank
 * (lowest first, leftmost on ties) until no merge applies.
 */
class Bpe {
  #regexes;
  #ignoreMerges;
  #byteIds;
  /** Token text to id, for ignore_merges (null without). */
  #idOfText;
  #rankOfPair;
  /** `#mergedOf[rank]`: the token a merge makes. */
  #mergedOf;
  /** Buffers reused from word to word: its bytes, symbol ids and links. */
  #bytes = new Uint8Array(64);
  #ids = new Int32Array(64);
  #next = new Int32Array(64);
  #prev = new Int32Array(64);
  /** Merge candidates as rank * 2^32 + left index: lowest rank first, then leftmost. */
  #queue = new Heap((a, b) => a < b);

  constructor(data, textOf) {
    this.#regexes = data.regexes.map(regexFromRust);
    this.#ignoreMerges = Boolean(data.ignore_merges);
    if (data.byte_ids?.length !== 256) throw new Error(`${FORMAT}: bpe needs 256 byte_ids`);
    this.#byteIds = Int32Array.from(data.byte_ids, (id) => id ?? MISSING);
    this.#idOfText = this.#ignoreMerges ? idsOfTexts(data.texts.length, textOf) : null;
    // Ranks and indices share a number in #queue: both must stay exact.
    if (data.merges.length >= 2 ** 21) throw new Error(`${FORMAT}: ${data.merges.length} merges, more than this port handles`);
    this.#rankOfPair = new PairTable(data.merges.length);
    this.#mergedOf = new Int32Array(data.merges.length);
    data.merges.forEach(([left, right, merged], rank) => {
      this.#rankOfPair.set(left, right, rank);
      this.#mergedOf[rank] = merged;
    });
  }

  /** Appends the tokens of one text fragment (where it is makes no difference to BPE). */
  encode(raw, _afterSpecial, out) {
    const { text, standIns } = lenientUtf8(raw);
    // Words repeat: each distinct word is merged once per fragment. Not with
    // stand-ins, where the same text may stand for other bytes.
    const seen = standIns === null ? new Map() : null;
    splitWords(this.#regexes, 0, text, 0, (word, offset) => {
      const known = seen?.get(word);
      if (known !== undefined) {
        for (const id of known) out.push(id);
        return;
      }
      const first = out.length;
      this.#word(word, offset, standIns, out);
      seen?.set(word, out.slice(first));
    });
  }

  /** Appends the tokens of one word (at `offset` in its fragment's text). */
  #word(word, offset, standIns, out) {
    if (this.#bytes.length < 3 * word.length) this.#grow(3 * word.length);
    const n = wordBytes(word, offset, standIns, this.#bytes);
    const bytes = this.#bytes;
    if (this.#ignoreMerges) {
      let spelled = '';
      for (let i = 0; i < n; i++) spelled += BYTE_CHAR_TEXT[bytes[i]];
      const id = this.#idOfText.get(spelled);
      if (id !== undefined) {
        out.push(id);
        return;
      }
    }
    const [ids, next, prev, queue, pairs] = [this.#ids, this.#next, this.#prev, this.#queue, this.#rankOfPair];
    for (let i = 0; i < n; i++) {
      ids[i] = this.#byteIds[bytes[i]];
      next[i] = i + 1;
      prev[i] = i - 1;
    }
    const rankAt = (l, r) => (ids[l] === MISSING || ids[r] === MISSING ? -1 : pairs.get(ids[l], ids[r]));
    const candidate = (l, r) => {
      const rank = rankAt(l, r);
      if (rank >= 0) queue.push(rank * 2 ** 32 + l);
    };
    for (let i = 1; i < n; i++) candidate(i - 1, i);
    while (queue.size > 0) {
      const key = queue.pop();
      const rank = Math.floor(key / 2 ** 32);
      const l = key - rank * 2 ** 32;
      const r = next[l];
      // Stale unless the pair at l is still this merge. The same test as
      // bpe.rs (same left id, right id and right index): ranks are one per
      // pair, a symbol that merges never gets its id back (a merged token's
      // text is longer), and l's right neighbour changes only when l merges.
      if (r >= n || rankAt(l, r) !== rank) continue;
      ids[l] = this.#mergedOf[rank];
      ids[r] = MISSING;
      const after = next[r];
      next[l] = after;
      next[r] = n;
      if (after < n) {
        prev[after] = l;
        candidate(l, after);
      }
      if (prev[l] >= 0) candidate(prev[l], l);
    }
    for (let i = 0; i < n; i = next[i]) if (ids[i] !== MISSING) out.push(ids[i]);
  }

  #grow(length) {
    this.#bytes = new Uint8Array(length);
    this.#ids = new Int32Array(length);
    this.#next = new Int32Array(length);
    this.#prev = new Int32Array(length);
  }
}

/**
 * Token pairs (left, right) to merge ranks: an open-addressing hash table of
 * integers, so that the merge loop looks pairs up without allocating. For a
 * pair given twice the first rank stays, as in bpe.rs.
 */
class PairTable {
  #lefts;
  #rights;
  #ranks;
  #mask;

  constructor(count) {
    let size = 16;
    while (size < 1.5 * count) size *= 2;
    this.#lefts = new Int32Array(size).fill(-1);
    this.#rights = new Int32Array(size);
    this.#ranks = new Int32Array(size);
    this.#mask = size - 1;
  }

  set(left, right, rank) {
    let i = this.#slot(left, right);
    for (; this.#lefts[i] !== -1; i = (i + 1) & this.#mask) {
      if (this.#lefts[i] === left && this.#rights[i] === right) return;
    }
    this.#lefts[i] = left;
    this.#rights[i] = right;
    this.#ranks[i] = rank;
  }

  /** The rank of a pair, or -1 if it does not merge. */
  get(left, right) {
    for (let i = this.#slot(left, right); this.#lefts[i] !== -1; i = (i + 1) & this.#mask) {
      if (this.#lefts[i] === left && this.#rights[i] === right) return this.#ranks[i];
    }
    return -1;
  }

  #slot(left, right) {
    let h = Math.imul(left, 0x9e3779b1) ^ right;
    h = Math.imul(h ^ (h >>> 15), 0x85ebca6b);
    return (h ^ (h >>> 13)) & this.#mask;
  }
}

/**
 * Text from bytes as bpe.rs `lenient_utf8` (llama.cpp's `unicode_cpts_from_utf8`)
 * reads them: valid UTF-8 as it is; otherwise a byte that does not start a
 * complete sequence becomes U+FFFD and reading goes on at the next byte,
 * overlong forms give their code point, code points past U+10FFFF become
 * U+FFFD, and a surrogate becomes the stand-in U+E000 + (s - U+D800), of
 * the same regex class, as in Rust (whose strings cannot hold one): a JS
 * string can, but two in a row (CESU-8) would read as one astral character,
 * another class. `standIns` holds the UTF-16 offsets of the stand-ins (null
 * if none), to put their bytes back.
 */
function lenientUtf8(bytes) {
  try {
    return { text: strictUtf8.decode(bytes), standIns: null };
  } catch {
    // Not valid UTF-8: read leniently below.
  }
  const isContinuation = (j) => j < bytes.length && (bytes[j] & 0xc0) === 0x80;
  const codePoints = [];
  const standIns = new Set();
  let utf16Offset = 0;
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let cpt = 0xfffd;
    let length = 1;
    if (b < 0x80) {
      cpt = b;
    } else if ((b & 0x40) === 0) {
      // A stray continuation byte.
    } else if ((b & 0x20) === 0) {
      if (isContinuation(i + 1)) [cpt, length] = [((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f), 2];
    } else if ((b & 0x10) === 0) {
      if (isContinuation(i + 1) && isContinuation(i + 2)) {
        [cpt, length] = [((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f), 3];
      }
    } else if ((b & 0x08) === 0) {
      if (isContinuation(i + 1) && isContinuation(i + 2) && isContinuation(i + 3)) {
        cpt = ((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f);
        length = 4;
        if (cpt > 0x10ffff) cpt = 0xfffd;
      }
    }
    if (cpt >= 0xd800 && cpt < 0xe000) {
      standIns.add(utf16Offset);
      cpt = cpt - 0xd800 + 0xe000;
    }
    codePoints.push(cpt);
    utf16Offset += cpt > 0xffff ? 2 : 1;
    i += length;
  }
  let text = '';
  for (let i = 0; i < codePoints.length; i += 8192) text += String.fromCodePoint(...codePoints.slice(i, i + 8192));
  return { text, standIns: standIns.size > 0 ? standIns : null };
}

/**
 * Writes a word's bytes into `out` (room for 3 per UTF-16 unit) and returns
 * their count: its UTF-8, with each stand-in of `lenientUtf8` (at `offset` +
 * its index, in the fragment's text) back to its surrogate's bytes.
 */
function wordBytes(word, offset, standIns, out) {
  let n = 0;
  for (let i = 0; i < word.length; i++) {
    let cpt = word.codePointAt(i);
    if (standIns?.has(offset + i)) cpt = cpt - 0xe000 + 0xd800;
    if (cpt < 0x80) {
      out[n++] = cpt;
    } else if (cpt < 0x800) {
      out[n++] = 0xc0 | (cpt >> 6);
      out[n++] = 0x80 | (cpt & 0x3f);
    } else if (cpt < 0x10000) {
      out[n++] = 0xe0 | (cpt >> 12);
      out[n++] = 0x80 | ((cpt >> 6) & 0x3f);
      out[n++] = 0x80 | (cpt & 0x3f);
    } else {
      out[n++] = 0xf0 | (cpt >> 18);
      out[n++] = 0x80 | ((cpt >> 12) & 0x3f);
      out[n++] = 0x80 | ((cpt >> 6) & 0x3f);
      out[n++] = 0x80 | (cpt & 0x3f);
      i++;
    }
  }
  return n;
}

/**
 * Calls `emit(word, offset)` with each word of `text` (at `offset` in the
 * fragment), as pre.rs `split` (llama.cpp's `unicode_regex_split`): the
 * first regex cuts the text into matches and the gaps between them (both are
 * pieces), then each piece is cut by the rest. Each piece is its own string,
 * as in Rust, so lookaheads and `$` see the piece's end, not the text's.
 * Matches are found as fancy-regex's `find_iter` finds them: after an empty
 * match the search goes on one character later, and an empty match right
 * where the previous match ended is not one.
 */
function splitWords(regexes, index, text, offset, emit) {
  if (index === regexes.length) {
    emit(text, offset);
    return;
  }
  const regex = regexes[index];
  let at = 0;
  let searchFrom = 0;
  let previousEnd = -1;
  while (searchFrom <= text.length) {
    regex.lastIndex = searchFrom;
    const match = regex.exec(text);
    if (match === null) break;
    const start = match.index;
    const end = start + match[0].length;
    if (start === end) {
      searchFrom = end + (text.codePointAt(end) > 0xffff ? 2 : 1);
      if (end === previousEnd) continue;
    } else {
      searchFrom = end;
    }
    previousEnd = end;
    if (start > at) splitWords(regexes, index + 1, text.slice(at, start), offset + at, emit);
    if (end > start) splitWords(regexes, index + 1, match[0], offset + start, emit);
    at = end;
  }
  if (at < text.length) splitWords(regexes, index + 1, text.slice(at), offset + at, emit);
}

/**
 * A pre-tokenizer regex as the Rust side runs it (fancy-regex syntax, Unicode
 * semantics) as a JS RegExp (`u` flag: code points, and `v` would refuse the
 * unescaped `(){}|` in DeepSeek V3's class) that matches exactly the same:
 * - `\x{HHHH}` is written `\u{HHHH}`;
 * - `\s` / `\S` are Unicode White_Space in Rust (JS's `\s` adds U+FEFF and
 *   lacks U+0085): `\p{White_Space}` / `\P{White_Space}`, in classes too;
 * - `\d` is Unicode `\p{Nd}`; `\w` is Alphabetic, marks, Nd, Pc and
 *   Join_Control (UTS#18, as Rust); `\W` in a class cannot be spelled (no
 *   nested classes with `u`) and is refused;
 * - `\p{Name}` names a script when JS does not know Name as a category or
 *   binary property (`\p{Han}` is `\p{Script=Han}`);
 * - `.` excludes only `\n` in Rust (JS also excludes \r, U+2028, U+2029);
 * - `^` and `$` are the ends of the text in both (no `m` flag);
 * - `\b`, nested classes and class set operations (`&&`, `--`, `~~`) mean
 *   something else in JS and are refused; other Rust-only syntax fails to compile.
 * Global, to find match after match from `lastIndex`.
 */
function regexFromRust(source) {
  const WORD = '\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}';
  const refuse = (what) => {
    throw new Error(`regex ${source}: ${what} has no JavaScript equivalent here`);
  };
  let js = '';
  let inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      const e = source[++i];
      if (e === 'x' && source[i + 1] === '{') {
        const close = source.indexOf('}', i);
        js += `\\u{${source.slice(i + 2, close)}}`;
        i = close;
      } else if (e === 'p' || e === 'P') {
        // `\p{Name}`, or `\pL` with a one-letter name.
        const close = source[i + 1] === '{' ? source.indexOf('}', i) : i + 1;
        const name = source[i + 1] === '{' ? source.slice(i + 2, close) : source[close];
        let known = true;
        try {
          new RegExp(`\\p{${name}}`, 'u');
        } catch {
          known = false;
        }
        js += `\\${e}{${known ? name : `Script=${name}`}}`;
        i = close;
      } else if (e === 's' || e === 'S') {
        js += e === 's' ? '\\p{White_Space}' : '\\P{White_Space}';
      } else if (e === 'd' || e === 'D') {
        js += e === 'd' ? '\\p{Nd}' : '\\P{Nd}';
      } else if (e === 'w') {
        js += inClass ? WORD : `[${WORD}]`;
      } else if (e === 'W') {
        js += inClass ? refuse('\\W in a class') : `[^${WORD}]`;
      } else if (e === 'b' || e === 'B') {
        refuse(`\\${e}`);
      } else {
        js += `\\${e}`;
      }
    } else if (inClass) {
      if (c === '[') refuse('a nested class');
      if ((c === '&' || c === '-' || c === '~') && source[i + 1] === c) refuse(`${c}${c} in a class`);
      if (c === ']') inClass = false;
      js += c;
    } else {
      if (c === '[') {
        inClass = true;
        js += source[i + 1] === '^' ? '[^' : '[';
        if (source[i + 1] === '^') i++;
        // A `]` first in a Rust class is a literal `]`.
        if (source[i + 1] === ']') {
          js += '\\]';
          i++;
        }
      } else {
        js += c === '.' ? '[^\\n]' : c;
      }
    }
  }
  return new RegExp(js, 'gu');
}

/**
 * Sentencepiece-style tokenization, as spm.rs (llama.cpp's `llm_tokenizer_spm`):
 * spaces become `▁`, the text is cut into UTF-8 characters, and adjacent
 * symbols whose concatenation is a token are merged, highest score first
 * (leftmost on ties), until none can be; what is left that is not a token
 * becomes byte-fallback tokens.
 */
class Spm {
  /** Each token's score as an integer ordered as Rust's `f32::total_cmp` orders the scores. */
  #scoreOrder;
  #byteTokens;
  #addSpacePrefix;
  /** Token text to id. */
  #idOfText;

  constructor(data, textOf) {
    const n = data.texts.length;
    if (data.scores?.length !== n) throw new Error(`${FORMAT}: ${data.scores?.length} scores for ${n} tokens`);
    if (data.byte_tokens?.length !== 256) throw new Error(`${FORMAT}: spm needs 256 byte_tokens`);
    const bits = new Int32Array(Float32Array.from(data.scores).buffer);
    // total_cmp: flip the magnitude bits of negatives, then compare as signed.
    this.#scoreOrder = bits.map((b) => b ^ ((b >> 31) >>> 1));
    this.#byteTokens = Int32Array.from(data.byte_tokens);
    this.#addSpacePrefix = Boolean(data.add_space_prefix);
    this.#idOfText = idsOfTexts(n, textOf);
  }

  /**
   * Appends the tokens of one text fragment; `afterSpecial` says whether it
   * starts the text or follows a special token (where the space prefix goes).
   */
  encode(raw, afterSpecial, out) {
    let text = this.#addSpacePrefix && afterSpecial ? SPM_SPACE : '';
    text += binaryString(raw).replaceAll(' ', SPM_SPACE);
    // Symbols as a linked list: start, length (0 once merged away), neighbours.
    const starts = [];
    const lengths = [];
    for (let at = 0; at < text.length; ) {
      const length = Math.min(utf8Length(text.charCodeAt(at)), text.length - at);
      starts.push(at);
      lengths.push(length);
      at += length;
    }
    const n = starts.length;
    if (n === 0) return;
    const prev = Array.from({ length: n }, (_, i) => i - 1);
    const next = Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    // {score, left, right, length}: highest score first, then leftmost.
    const queue = new Heap((a, b) => (a.score !== b.score ? a.score > b.score : a.left < b.left));
    const tryAdd = (left, right) => {
      if (left < 0 || right < 0) return;
      const length = lengths[left] + lengths[right];
      const id = this.#idOfText.get(text.slice(starts[left], starts[left] + length));
      if (id !== undefined) queue.push({ score: this.#scoreOrder[id], left, right, length });
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);
    while (queue.size > 0) {
      const { left, right, length } = queue.pop();
      // Stale: one side was merged away or grew since.
      if (lengths[left] === 0 || lengths[right] === 0 || lengths[left] + lengths[right] !== length) continue;
      lengths[left] = length;
      lengths[right] = 0;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      tryAdd(prev[left], left);
      tryAdd(left, next[left]);
    }
    for (let i = 0; i >= 0; i = next[i]) {
      const symbol = text.slice(starts[i], starts[i] + lengths[i]);
      const id = this.#idOfText.get(symbol);
      if (id !== undefined) out.push(id);
      else for (let k = 0; k < symbol.length; k++) out.push(this.#byteTokens[symbol.charCodeAt(k)]);
    }
  }
}

/** UTF-8 sequence length from a lead byte, as llama.cpp's `unicode_len_utf8` (a stray continuation byte counts as one). */
function utf8Length(byte) {
  return UTF8_LENGTH_BY_HIGH_NIBBLE[byte >> 4];
}
const UTF8_LENGTH_BY_HIGH_NIBBLE = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];

/** A binary heap: `pop` gives the entry `before` puts first. */
class Heap {
  #entries = [];
  #before;

  constructor(before) {
    this.#before = before;
  }

  get size() {
    return this.#entries.length;
  }

  push(entry) {
    const entries = this.#entries;
    let i = entries.push(entry) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(entry, entries[parent])) break;
      entries[i] = entries[parent];
      i = parent;
    }
    entries[i] = entry;
  }

  pop() {
    const entries = this.#entries;
    const top = entries[0];
    const last = entries.pop();
    if (entries.length > 0) {
      let i = 0;
      for (;;) {
        let child = 2 * i + 1;
        if (child >= entries.length) break;
        if (child + 1 < entries.length && this.#before(entries[child + 1], entries[child])) child++;
        if (!this.#before(entries[child], last)) break;
        entries[i] = entries[child];
        i = child;
      }
      entries[i] = last;
    }
    return top;
  }
}

/**
 * The JSON's byte strings (a string, as UTF-8, or an array of byte values)
 * concatenated: {bytes, ends}, `ends[i]` ending value i. The strings are
 * encoded in one call (one per token is several times slower in Chromium).
 */
function concatenate(values) {
  const ends = new Uint32Array(values.length);
  const strings = [];
  let at = 0;
  values.forEach((v, i) => {
    if (typeof v === 'string') {
      for (let k = 0; k < v.length; k++) {
        const unit = v.charCodeAt(k);
        if (unit < 0x80) at += 1;
        else if (unit < 0x800) at += 2;
        else if ((unit & 0xfc00) === 0xd800) [at, k] = [at + 4, k + 1];
        else at += 3;
      }
      strings.push(v);
    } else {
      at += v.length;
    }
    ends[i] = at;
  });
  const encoded = utf8Encoder.encode(strings.join(''));
  if (strings.length === values.length && encoded.length === at) return { bytes: encoded, ends };
  const bytes = new Uint8Array(at);
  let from = 0;
  values.forEach((v, i) => {
    const start = i === 0 ? 0 : ends[i - 1];
    if (typeof v === 'string') {
      bytes.set(encoded.subarray(from, from + ends[i] - start), start);
      from += ends[i] - start;
    } else {
      bytes.set(v, start);
    }
  });
  // Counted as UTF-8 above, but a lone surrogate is encoded as U+FFFD.
  if (from !== encoded.length) throw new Error(`${FORMAT}: a token text or piece is not valid Unicode`);
  return { bytes, ends };
}

/** Token text (binary string) to id, as the Rust `token_to_id`: for duplicate texts the last id wins. */
function idsOfTexts(n, textOf) {
  const ids = new Map();
  for (let id = 0; id < n; id++) ids.set(textOf(id), id);
  return ids;
}

/** Bytes as a binary string: one char per byte (as UTF-16 units, none of them a surrogate or a BOM). */
function binaryString(bytes) {
  return utf16Decoder.decode(new Uint16Array(bytes));
}
