//! Splitting a document's text into chunks that are embedded and stored one by one.
//!
//! Sizes and overlaps are counted in Unicode scalar values (`char`s), the unit a tenant
//! configures (`default_chunk_size`, `default_chunk_overlap`); byte counts would make a
//! Japanese chunk a third of the size of an English one. Every chunk is a slice of the
//! input, so a stored chunk can always be traced back to its place in the document by
//! its byte offset.
//!
//! # How a chunk is placed
//!
//! The text is walked once, front to back. Each step has a *core*: the first
//! non-whitespace grapheme after the previous chunk. From the chunk's start (the core,
//! or a point inside the previous chunk's tail when there is an overlap) the largest
//! run of whole grapheme clusters that fits in `size` chars is the *window*; the chunk
//! ends at the best cut inside the window after the core, in this order of preference:
//!
//! 1. the end of the text, when the rest fits;
//! 2. a unit boundary: a paragraph start (PARAGRAPH only), then a sentence start;
//! 3. the end of a whitespace, so a word is not cut in half (looked for in the last
//!    quarter of the window only: further back it would only make a short chunk);
//! 4. the window's last grapheme boundary (CJK without punctuation, a 100 KB token).
//!
//! Taking the *last* boundary of the best kind is exactly greedy packing of whole
//! units. FIXED uses none of 2 and 3: windows of exactly `size` chars, cut on
//! graphemes. Sentences follow the core of the UAX #29 rules (see
//! `sentence_starts` for what is simplified and why); paragraphs are separated by
//! blank lines.
//!
//! # Overlap
//!
//! The next chunk starts inside the previous chunk's tail, at most `overlap` chars
//! before its end, snapped forward to the first sentence (or paragraph) start in that
//! tail, else the first word start, else the exact grapheme boundary (FIXED: always
//! the exact boundary, so its windows keep a fixed stride). If carrying the overlap
//! would push the cut to a worse kind of boundary than the chunk would get without it
//! (mid-sentence instead of at a full stop), the overlap is shortened until the better
//! cut fits: overlap is context, it should not cost a clean cut.
//!
//! # Guarantees (all tested, including on generated inputs)
//!
//! - every chunk has at most `size` chars, is non-empty and not whitespace-only;
//! - every chunk is `&text[start..start + len]`, and starts and ends on grapheme
//!   cluster boundaries (the one exception: a single cluster longer than `size`,
//!   such as thousands of stacked combining marks, is cut between its chars, because
//!   the size limit is the harder promise);
//! - every non-whitespace char of the input is in at least one chunk;
//! - starts and ends both strictly increase, so each chunk adds new text and the loop
//!   always terminates; consecutive chunks share at most `overlap` chars.
//!
//! # Cost
//!
//! Linear in the input for a given `size / (size - overlap)`: 10 MB of prose takes
//! about 0.1 s in a debug build. That needs care, because unicode-segmentation's
//! iterators are inlined into this crate and so run unoptimised in debug builds (all
//! graphemes of 10 MB: 2.4 s). The chunker therefore never iterates graphemes: it
//! moves by chars with `str::chars().count()` (word-at-a-time in std, fast even in
//! debug), finds sentence terminators with `memchr`-backed `str::find(char)`, and asks
//! `GraphemeCursor` about single positions, a few per chunk. A chunk count of
//! `len / (size - overlap)` is inherent: `size` 500 with `overlap` 499 on text with no
//! sentence or word boundary advances one char per chunk.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_segmentation::GraphemeCursor;

/// Smallest chunk size a tenant may configure, in chars.
pub const MIN_CHUNK_SIZE: usize = 500;
/// Largest chunk size a tenant may configure, in chars. Keeps a chunk well inside the
/// input limit of common embedding models.
pub const MAX_CHUNK_SIZE: usize = 16_000;
/// Largest overlap a tenant may configure, in chars.
pub const MAX_CHUNK_OVERLAP: usize = 1_000;
/// The chunk size of a tenant that configured none, in chars.
pub const DEFAULT_CHUNK_SIZE: usize = 4_000;
/// The overlap of a tenant that configured none, in chars.
pub const DEFAULT_CHUNK_OVERLAP: usize = 200;

/// How a text is cut into chunks; the `default_chunking_strategy` of a tenant's
/// configuration and the `chunking_strategy` of a job's options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChunkStrategy {
    /// Whole sentences packed greedily; the default because retrieval quality drops
    /// sharply when a sentence is split across two vectors.
    #[default]
    Sentence,
    /// Whole paragraphs (separated by blank lines) packed greedily; an over-long
    /// paragraph is packed by sentences.
    Paragraph,
    /// Windows of exactly `size` chars, for text without usable structure.
    Fixed,
}

impl ChunkStrategy {
    /// Every strategy, in the order they are documented.
    pub const ALL: [ChunkStrategy; 3] = [Self::Sentence, Self::Paragraph, Self::Fixed];

    /// The wire name, as in the HTTP API and the database: `"SENTENCE"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sentence => "SENTENCE",
            Self::Paragraph => "PARAGRAPH",
            Self::Fixed => "FIXED",
        }
    }
}

impl fmt::Display for ChunkStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name that is none of `SENTENCE`, `PARAGRAPH`, `FIXED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunking_strategy must be one of SENTENCE, PARAGRAPH, FIXED, got {0:?}")]
pub struct UnknownChunkStrategy(pub String);

impl FromStr for ChunkStrategy {
    type Err = UnknownChunkStrategy;

    /// Case-insensitive, because this parses configuration files and command lines
    /// written by people; the JSON wire format (serde) stays exactly uppercase.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|strategy| strategy.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownChunkStrategy(s.to_owned()))
    }
}

/// Why chunking parameters were refused. The message names the field as the HTTP API
/// spells it and the allowed range, so it can be shown to a tenant as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkParamError {
    #[error("chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} characters, got {0}")]
    Size(usize),
    #[error("chunk_overlap must be between 0 and {MAX_CHUNK_OVERLAP} characters, got {0}")]
    Overlap(usize),
    #[error("chunk_overlap must be less than chunk_size ({size}), got {overlap}")]
    OverlapNotBelowSize { overlap: usize, size: usize },
}

impl ChunkParamError {
    /// The offending field, for a structured API error.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Size(_) => "chunk_size",
            Self::Overlap(_) | Self::OverlapNotBelowSize { .. } => "chunk_overlap",
        }
    }
}

/// Validated chunking parameters. The fields are private so that every value in
/// circulation has passed [`ChunkParams::new`]: the chunker relies on `size > overlap`
/// for progress and on `size >= MIN_CHUNK_SIZE` never being zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    size: usize,
    overlap: usize,
    strategy: ChunkStrategy,
}

impl ChunkParams {
    /// Checks `size` in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`, `overlap` in
    /// `0..=MAX_CHUNK_OVERLAP` and `overlap < size`.
    pub fn new(
        size: usize,
        overlap: usize,
        strategy: ChunkStrategy,
    ) -> Result<Self, ChunkParamError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
            return Err(ChunkParamError::Size(size));
        }
        if overlap > MAX_CHUNK_OVERLAP {
            return Err(ChunkParamError::Overlap(overlap));
        }
        if overlap >= size {
            return Err(ChunkParamError::OverlapNotBelowSize { overlap, size });
        }
        Ok(Self {
            size,
            overlap,
            strategy,
        })
    }

    /// Most chars in one chunk.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Most chars two consecutive chunks share.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    pub fn strategy(&self) -> ChunkStrategy {
        self.strategy
    }
}

impl Default for ChunkParams {
    /// The original plan's `TenantConfiguration` defaults: 4000 chars, 200 overlap,
    /// SENTENCE.
    fn default() -> Self {
        Self {
            size: DEFAULT_CHUNK_SIZE,
            overlap: DEFAULT_CHUNK_OVERLAP,
            strategy: ChunkStrategy::Sentence,
        }
    }
}

/// One piece of a document, borrowed from the document's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Position among the document's chunks, from 0; part of the point id, so a
    /// re-ingested document overwrites its own points.
    pub index: u32,
    /// `&text[start..start + self.text.len()]`. Trimmed of surrounding whitespace,
    /// except with FIXED, whose windows are exactly `size` chars.
    pub text: &'a str,
    /// Byte offset of `text` in the document.
    pub start: usize,
}

/// Cuts `text` into chunks according to `params`; see the module documentation for
/// the rules and guarantees. Empty or whitespace-only text gives no chunks.
pub fn chunk_text<'a>(text: &'a str, params: &ChunkParams) -> Vec<Chunk<'a>> {
    if text.trim_start().is_empty() {
        return Vec::new();
    }
    Chunker::new(text, params).run()
}

/// The chunk before the one being placed, as emitted.
struct Previous {
    start: usize,
    end: usize,
    /// A grapheme boundary at or before `start` (where its window began), from which
    /// boundaries inside the chunk can be judged.
    anchor: usize,
}

struct Chunker<'a> {
    text: &'a str,
    size: usize,
    overlap: usize,
    strategy: ChunkStrategy,
    /// Unit boundaries in order of preference (paragraph starts, then sentence starts),
    /// each list ascending and ending with `text.len()`. Empty for FIXED.
    units: Vec<Vec<usize>>,
}

impl<'a> Chunker<'a> {
    fn new(text: &'a str, params: &ChunkParams) -> Self {
        let units = match params.strategy {
            ChunkStrategy::Sentence => vec![sentence_starts(text)],
            ChunkStrategy::Paragraph => vec![paragraph_starts(text), sentence_starts(text)],
            ChunkStrategy::Fixed => Vec::new(),
        };
        Self {
            text,
            size: params.size,
            overlap: params.overlap,
            strategy: params.strategy,
            units,
        }
    }

    fn fixed(&self) -> bool {
        self.strategy == ChunkStrategy::Fixed
    }

    fn run(self) -> Vec<Chunk<'a>> {
        let mut chunks = Vec::new();
        let mut previous: Option<Previous> = None;
        let mut core = self.skip_space(0);
        while core < self.text.len() {
            let (anchor, cut) = self.place(core, previous.as_ref());
            let (start, end) = if self.fixed() {
                (anchor, cut)
            } else {
                self.trim(anchor, cut)
            };
            // Cannot fail: every position comes from char or grapheme arithmetic. If it
            // ever did, stopping beats panicking in a worker or looping forever.
            let Some(piece) = self.text.get(start..end).filter(|_| cut > core) else {
                break;
            };
            chunks.push(Chunk {
                index: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
                text: piece,
                start,
            });
            previous = Some(Previous { start, end, anchor });
            core = self.skip_space(cut);
        }
        chunks
    }

    /// Where the chunk whose new text begins at `core` starts and is cut. `cut > core`
    /// always: that is the progress guarantee.
    fn place(&self, core: usize, previous: Option<&Previous>) -> (usize, usize) {
        let plain = || (core, self.best_cut(core, core).0);
        let Some(previous) = previous.filter(|_| self.overlap > 0) else {
            return plain();
        };
        // Whitespace between the previous chunk and the core counts towards the size
        // of a chunk that reaches back over it.
        let gap = self.chars(previous.end, core);
        // At least one char of room must stay for new text.
        let Some(start) = self.overlap_start(previous, gap, self.size - 1) else {
            return plain();
        };
        if self.limit(start) <= core {
            return plain();
        }
        let (cut, rank) = self.best_cut(start, core);
        if rank == 0 || self.fixed() {
            return (start, cut);
        }
        let (plain_cut, plain_rank) = self.best_cut(core, core);
        if plain_rank >= rank {
            return (start, cut);
        }
        // Without the overlap the chunk ends at a better boundary: keep that cut and
        // carry only as much overlap as still fits in front of it.
        let room = self.size.saturating_sub(self.chars(core, plain_cut));
        match self.overlap_start(previous, gap, room) {
            Some(start) if self.chars(start, plain_cut) <= self.size => (start, plain_cut),
            _ => (core, plain_cut),
        }
    }

    /// The start of an overlapping chunk: inside the previous chunk's tail, at most
    /// `overlap` chars before its end and at most `room` chars (counting the `gap` of
    /// whitespace after it) before the next core; snapped forward to a unit start,
    /// else a word start, else left on the grapheme boundary. `None` when no overlap
    /// fits.
    fn overlap_start(&self, previous: &Previous, gap: usize, room: usize) -> Option<usize> {
        let budget = self.overlap.min(room.checked_sub(gap)?);
        let text = self.text;
        let back = retreat_chars(text, previous.end, budget, previous.start);
        let mut lowest = ceil_grapheme(text, previous.anchor, back);
        if lowest <= previous.start {
            // Starting at the previous start would repeat the whole previous chunk.
            let next_char = text
                .get(previous.start..)
                .and_then(|rest| rest.chars().next())
                .map_or(text.len(), |c| previous.start + c.len_utf8());
            lowest = ceil_grapheme(text, previous.anchor, next_char);
        }
        if lowest >= previous.end {
            return None;
        }
        for units in &self.units {
            let from = units.partition_point(|&u| u < lowest);
            let unit = units
                .iter()
                .skip(from)
                .take_while(|&&u| u < previous.end)
                .find(|&&u| is_grapheme_boundary(text, previous.anchor, u));
            if let Some(&unit) = unit {
                return Some(unit);
            }
        }
        if !self.fixed() {
            let tail = text.get(lowest..previous.end).unwrap_or_default();
            let after_space = text
                .get(..lowest)
                .and_then(|head| head.chars().next_back())
                .is_some_and(char::is_whitespace);
            if after_space {
                return Some(lowest);
            }
            let word = tail
                .char_indices()
                .filter(|&(_, c)| c.is_whitespace())
                .map(|(i, c)| lowest + i + c.len_utf8())
                .take_while(|&pos| pos < previous.end)
                .find(|&pos| is_grapheme_boundary(text, previous.anchor, pos));
            if let Some(word) = word {
                return Some(word);
            }
        }
        Some(lowest)
    }

    /// The best place to end a chunk that starts at `start` (a grapheme boundary)
    /// and whose new text begins at `core`, with its rank: 0 is best (the end of the
    /// text, or the first kind of unit). Always after `core` when the chunk's window
    /// reaches past it.
    fn best_cut(&self, start: usize, core: usize) -> (usize, usize) {
        let text = self.text;
        let limit = self.limit(start);
        if limit >= text.len() {
            return (text.len(), 0);
        }
        for (rank, units) in self.units.iter().enumerate() {
            let upto = units.partition_point(|&u| u <= limit);
            let unit = units
                .get(..upto)
                .into_iter()
                .flatten()
                .rev()
                .take_while(|&&u| u > core)
                .find(|&&u| is_grapheme_boundary(text, start, u));
            if let Some(&unit) = unit {
                return (unit, rank);
            }
        }
        let rank = self.units.len();
        if !self.fixed()
            && let Some(after) = self.last_space_end(start, core, limit)
        {
            return (after, rank);
        }
        (limit, rank + 1)
    }

    /// The end of the last whitespace in `core..limit`, so that no word is split;
    /// `None` if there is none in the last quarter of the window. Looking further back
    /// would make a short chunk and still leave a long unspaced run to cut (CJK text,
    /// a URL, base64), and would make every chunk of such text a full scan.
    fn last_space_end(&self, start: usize, core: usize, limit: usize) -> Option<usize> {
        let text = self.text;
        let floor = retreat_chars(text, limit, self.size / 4, core);
        let region = text.get(floor..limit)?;
        // ASCII whitespace is found with `memchr`; the slow char-by-char search only
        // runs over what follows the last ASCII space.
        let ascii = region.is_ascii();
        let mut upper = region.len();
        loop {
            let head = region.get(..upper)?;
            let fast = [' ', '\n', '\t', '\r', '\u{B}', '\u{C}']
                .into_iter()
                .filter_map(|c| head.rfind(c))
                .max();
            let found = if ascii {
                fast
            } else {
                let from = fast.map_or(0, |i| i + 1);
                head.get(from..)
                    .and_then(|tail| tail.rfind(char::is_whitespace))
                    .map(|i| from + i)
                    .or(fast)
            };
            let i = found?;
            let space = region.get(i..)?.chars().next()?;
            let after = floor + i + space.len_utf8();
            if after > core && is_grapheme_boundary(text, start, after) {
                return Some(after);
            }
            upper = i;
        }
    }

    /// The end of the longest run of whole grapheme clusters from `start` (a grapheme
    /// boundary) that fits in `size` chars.
    fn limit(&self, start: usize) -> usize {
        let by_chars = advance_chars(self.text, start, self.size);
        if by_chars >= self.text.len() {
            return self.text.len();
        }
        match floor_grapheme(self.text, start, by_chars) {
            // A single cluster longer than a whole chunk, such as thousands of stacked
            // combining marks: cut it between chars, the size limit is the harder
            // promise.
            floor if floor <= start => by_chars,
            floor => floor,
        }
    }

    /// The first non-whitespace grapheme at or after `pos` (a grapheme boundary), or
    /// the end of the text.
    fn skip_space(&self, pos: usize) -> usize {
        let rest = self.text.get(pos..).unwrap_or_default();
        match rest.find(|c: char| !c.is_whitespace()) {
            // A combining mark on a space makes the space part of a visible cluster.
            Some(i) => floor_grapheme(self.text, pos, pos + i),
            None => self.text.len(),
        }
    }

    /// `start..end` without whitespace at either side, still on grapheme boundaries.
    fn trim(&self, start: usize, end: usize) -> (usize, usize) {
        let piece = self.text.get(start..end).unwrap_or_default();
        let first = match piece.find(|c: char| !c.is_whitespace()) {
            Some(i) => floor_grapheme(self.text, start, start + i),
            None => return (start, start),
        };
        let last = piece
            .char_indices()
            .rfind(|&(_, c)| !c.is_whitespace())
            .map_or(end, |(i, c)| start + i + c.len_utf8());
        let last = if last >= end {
            end
        } else {
            ceil_grapheme(self.text, start, last).min(end)
        };
        (first, last)
    }

    /// Chars in `from..to`; zero if that is not a valid range.
    fn chars(&self, from: usize, to: usize) -> usize {
        self.text.get(from..to).map_or(0, |s| s.chars().count())
    }
}

// The helpers below work on byte offsets with `str::chars().count()` (which std
// implements with word-at-a-time counting, fast even in a debug build) and judge
// grapheme boundaries one position at a time with `GraphemeCursor`. Iterating all
// graphemes of a 10 MB text costs seconds in a debug build, because
// unicode-segmentation's iterators are inlined into this crate unoptimised; these
// checks touch a few positions per chunk.

/// The offset `n` chars after `from` (a char boundary), or the end of the text.
fn advance_chars(text: &str, from: usize, n: usize) -> usize {
    let mut pos = from;
    let mut remaining = n;
    while remaining > 0 && pos < text.len() {
        // `remaining` chars take at least `remaining` bytes, so a step of that many
        // bytes (rounded up to the end of the char it lands in) never overshoots.
        let mut end = pos.saturating_add(remaining).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        remaining = remaining.saturating_sub(text.get(pos..end).map_or(0, |s| s.chars().count()));
        pos = end;
    }
    pos
}

/// The offset `n` chars before `from` (a char boundary), but not before `floor`.
fn retreat_chars(text: &str, from: usize, n: usize, floor: usize) -> usize {
    let mut pos = from;
    let mut remaining = n;
    while remaining > 0 && pos > floor {
        let mut begin = pos.saturating_sub(remaining).max(floor);
        while !text.is_char_boundary(begin) {
            begin -= 1;
        }
        if begin < floor {
            return floor;
        }
        remaining = remaining.saturating_sub(text.get(begin..pos).map_or(0, |s| s.chars().count()));
        pos = begin;
    }
    pos
}

/// Whether `pos` is a grapheme cluster boundary, judged from `anchor`, a known
/// boundary at or before it (so that regional-indicator pairs are counted from a
/// known place, and the look-back is bounded by one chunk).
fn is_grapheme_boundary(text: &str, anchor: usize, pos: usize) -> bool {
    if pos == anchor || pos == text.len() {
        return true;
    }
    if let Some(boundary) = regional_indicator_boundary(text, anchor, pos) {
        return boundary;
    }
    match text.get(anchor..) {
        Some(rest) if pos > anchor && text.is_char_boundary(pos) => {
            GraphemeCursor::new(pos - anchor, rest.len(), true)
                .is_boundary(rest, 0)
                .unwrap_or(false)
        }
        _ => false,
    }
}

/// The last grapheme boundary at or before `pos`, and not before `anchor`.
fn floor_grapheme(text: &str, anchor: usize, pos: usize) -> usize {
    let Some(rest) = text.get(anchor..) else {
        return anchor;
    };
    if pos <= anchor || !text.is_char_boundary(pos) {
        return anchor;
    }
    match regional_indicator_boundary(text, anchor, pos) {
        Some(true) => return pos,
        // Inside a flag: the flag starts one regional indicator earlier.
        Some(false) => return floor_grapheme(text, anchor, pos - REGIONAL_INDICATOR_LEN),
        None => {}
    }
    let mut cursor = GraphemeCursor::new(pos - anchor, rest.len(), true);
    if cursor.is_boundary(rest, 0) == Ok(true) {
        return pos;
    }
    match cursor.prev_boundary(rest, 0) {
        Ok(Some(offset)) => anchor + offset,
        _ => anchor,
    }
}

/// The first grapheme boundary at or after `pos`, judged from `anchor`.
fn ceil_grapheme(text: &str, anchor: usize, pos: usize) -> usize {
    let Some(rest) = text.get(anchor..) else {
        return text.len();
    };
    if pos <= anchor {
        return anchor;
    }
    if !text.is_char_boundary(pos) {
        return text.len();
    }
    match regional_indicator_boundary(text, anchor, pos) {
        Some(true) => return pos,
        Some(false) => return ceil_grapheme(text, anchor, pos + REGIONAL_INDICATOR_LEN),
        None => {}
    }
    let mut cursor = GraphemeCursor::new(pos - anchor, rest.len(), true);
    if cursor.is_boundary(rest, 0) == Ok(true) {
        return pos;
    }
    match cursor.next_boundary(rest, 0) {
        Ok(Some(offset)) => anchor + offset,
        _ => text.len(),
    }
}

/// Bytes of one regional indicator (U+1F1E6..=U+1F1FF) in UTF-8.
const REGIONAL_INDICATOR_LEN: usize = 4;

fn is_regional_indicator(bytes: Option<&[u8]>) -> bool {
    matches!(bytes, Some([0xF0, 0x9F, 0x87, 0xA6..=0xBF]))
}

/// Between two regional indicators, whether `pos` is a boundary: flags pair up from
/// the start of their run (or from `anchor`, a known boundary), so it is one when an
/// even number of them precede `pos`. `None` when `pos` is not between two.
///
/// `GraphemeCursor` finds the same parity by decoding the run back one char at a
/// time; in a debug build that made a run of flags many times slower to chunk than
/// any other text, as each check walked back a whole chunk.
fn regional_indicator_boundary(text: &str, anchor: usize, pos: usize) -> Option<bool> {
    let bytes = text.as_bytes();
    if !is_regional_indicator(bytes.get(pos..pos.checked_add(REGIONAL_INDICATOR_LEN)?)) {
        return None;
    }
    let mut back = pos;
    while back >= anchor + REGIONAL_INDICATOR_LEN
        && is_regional_indicator(bytes.get(back - REGIONAL_INDICATOR_LEN..back))
    {
        back -= REGIONAL_INDICATOR_LEN;
    }
    let preceding = (pos - back) / REGIONAL_INDICATOR_LEN;
    (preceding > 0).then_some(preceding.is_multiple_of(2))
}

/// Line and paragraph separators: a sentence always ends after one.
fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Sentence terminators that end a sentence only when whitespace follows, so
/// `3.14`, `example.com` and `v1.2!3` are not cut: Latin, Greek and Cyrillic
/// punctuation, ellipsis and double marks, Armenian, Arabic, Urdu, Devanagari,
/// Ethiopic and Myanmar full stops.
const SPACED_TERMINATORS: [char; 18] = [
    '.', '!', '?', '\u{2026}', '\u{203C}', '\u{2047}', '\u{2048}', '\u{2049}', '\u{589}',
    '\u{61F}', '\u{6D4}', '\u{964}', '\u{965}', '\u{1362}', '\u{1367}', '\u{1368}', '\u{104A}',
    '\u{104B}',
];

/// CJK terminators, which end a sentence with or without whitespace after them.
const CJK_TERMINATORS: [char; 4] = ['\u{3002}', '\u{FF01}', '\u{FF1F}', '\u{FF61}'];

const LINE_BREAKS: [char; 5] = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];

// `matches!` rather than `contains` on the arrays: it compiles to a few comparisons,
// which matters in debug builds.
fn is_terminator(c: char) -> bool {
    matches!(
        c,
        '.' | '!' | '?' | '\u{2026}' | '\u{203C}' | '\u{2047}'
            ..='\u{2049}'
                | '\u{589}'
                | '\u{61F}'
                | '\u{6D4}'
                | '\u{964}'
                | '\u{965}'
                | '\u{1362}'
                | '\u{1367}'
                | '\u{1368}'
                | '\u{104A}'
                | '\u{104B}'
                | '\u{3002}'
                | '\u{FF01}'
                | '\u{FF1F}'
                | '\u{FF61}'
    )
}

/// Closing quotes and brackets that stay with the sentence they close: `He said "no."`.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | ')'
            | ']'
            | '}'
            | '\u{BB}'
            | '\u{2019}'
            | '\u{201D}'
            | '\u{203A}'
            | '\u{3009}'
            | '\u{300B}'
            | '\u{300D}'
            | '\u{300F}'
            | '\u{3011}'
            | '\u{3015}'
            | '\u{FF09}'
            | '\u{FF3D}'
    )
}

const fn utf8_lead_byte(c: char) -> u8 {
    let c = c as u32;
    (match c {
        0..0x80 => c,
        0x80..0x800 => 0xC0 | (c >> 6),
        0x800..0x10000 => 0xE0 | (c >> 12),
        _ => 0xF0 | (c >> 18),
    }) as u8
}

/// Byte offsets where a sentence begins (not 0), then `text.len()`.
///
/// The rules are the core of UAX #29's sentence rules, simplified: a sentence ends
/// after a line break; and after a terminator run, closing quotes or brackets and
/// whitespace (whitespace is optional after CJK terminators), unless the next letter
/// after a `.` is lowercase (`e.g. this`, `Fig. 3 shows`), as in UAX #29 rule SB8.
/// Like UAX #29, `Dr. Smith` is two sentences; that only moves a cut, never loses
/// text.
///
/// Why not `split_sentence_bound_indices`: its iterator is inlined into this crate,
/// so in a debug build it runs unoptimised at ~65 ns a byte, most of a second for
/// 10 MB. Here every kind of terminator is found with `match_indices(char)`, which
/// std backs with `memchr` (a few milliseconds per pass over 10 MB even in debug),
/// and the hits are merged through a bitmap instead of a sort.
fn sentence_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let ascii = bytes.is_ascii();
    let mut marks = vec![0_u64; text.len() / 64 + 1];
    let mut mark = |pos: usize| {
        if pos > 0
            && pos < text.len()
            && let Some(word) = marks.get_mut(pos / 64)
        {
            *word |= 1 << (pos % 64);
        }
    };
    // A char whose first byte is absent cannot occur: one `memchr` says so.
    let present = |c: char| c.is_ascii() || (!ascii && bytes.contains(&utf8_lead_byte(c)));
    for c in LINE_BREAKS.into_iter().filter(|&c| present(c)) {
        for (i, _) in text.match_indices(c) {
            // In CRLF the break is after the LF, found by the LF pass.
            if !(c == '\r' && bytes.get(i + 1) == Some(&b'\n')) {
                mark(i + c.len_utf8());
            }
        }
    }
    for c in SPACED_TERMINATORS
        .into_iter()
        .chain(CJK_TERMINATORS)
        .filter(|&c| present(c))
    {
        // The search resumes after the run just judged (`...`, `?!`), so a megabyte
        // of dots is one search, not a million.
        let mut from = 0;
        while let Some(i) = text.get(from..).and_then(|rest| rest.find(c)) {
            let after = from + i + c.len_utf8();
            let (end, boundary) = sentence_end_after(text, c, after);
            if boundary {
                mark(end);
            }
            from = end.max(after);
        }
    }
    let mut starts = Vec::new();
    for (w, &word) in marks.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            starts.push(w * 64 + bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
    }
    starts.push(text.len());
    starts
}

/// Where the sentence ended by `terminator` (whose bytes end at `pos`) would end,
/// and whether it does end there. The end is after further terminators, closers
/// and spaces.
fn sentence_end_after(text: &str, terminator: char, pos: usize) -> (usize, bool) {
    let next = |at: usize| text.get(at..).and_then(|rest| rest.chars().next());
    let mut end = pos;
    while let Some(c) = next(end).filter(|&c| is_terminator(c) || is_closer(c)) {
        end += c.len_utf8();
    }
    let spaces_from = end;
    while let Some(c) = next(end).filter(|&c| c.is_whitespace() && !is_line_break(c)) {
        end += c.len_utf8();
    }
    let boundary = match next(end) {
        // The end of the text is a boundary anyway, and a line break right after
        // ends the sentence itself.
        None => false,
        Some(c) if is_line_break(c) => false,
        Some(_) if CJK_TERMINATORS.contains(&terminator) => true,
        Some(_) if end == spaces_from => false,
        Some(_) => {
            terminator != '.' || !next_letter_is_lowercase(text.get(end..).unwrap_or_default())
        }
    };
    (end, boundary)
}

/// UAX #29 rule SB8, bounded: after `.` and spaces, skipping digits and
/// punctuation, is the next letter lowercase? Then the `.` was an abbreviation.
fn next_letter_is_lowercase(rest: &str) -> bool {
    rest.chars()
        .take(32)
        .find(|&c| c.is_alphabetic() || is_line_break(c) || is_terminator(c))
        .is_some_and(char::is_lowercase)
}

/// Byte offsets of the first line of each paragraph after the first, then
/// `text.len()`. A paragraph break is a blank line, i.e. `\n\s*\n`; `\s` covers `\r`,
/// so CRLF text works too.
fn paragraph_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut line_start = 0;
    // Whether a blank line that follows a newline and ends with one was seen since
    // the last line with text: the `\n\s*\n` of the rule.
    let mut blank_seen = false;
    for line in text.split_inclusive('\n') {
        // Most lines start with a visible ASCII char; `trim` is for the rest.
        let blank = match line.as_bytes().first() {
            Some(byte) if byte.is_ascii_graphic() => false,
            _ => line.trim().is_empty(),
        };
        if blank {
            blank_seen |= line_start > 0 && line.ends_with('\n');
        } else {
            if blank_seen {
                starts.push(line_start);
            }
            blank_seen = false;
        }
        line_start += line.len();
    }
    starts.push(text.len());
    starts
}

#[cfg(test)]
mod tests {
    use unicode_segmentation::UnicodeSegmentation;

    use super::*;

    fn params(size: usize, overlap: usize, strategy: ChunkStrategy) -> ChunkParams {
        ChunkParams::new(size, overlap, strategy).unwrap()
    }

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    /// Byte offsets of every grapheme boundary of `text`, as a lookup table.
    fn grapheme_boundaries(text: &str) -> Vec<bool> {
        let mut table = vec![false; text.len() + 1];
        for (offset, _) in text.grapheme_indices(true) {
            table[offset] = true;
        }
        table[text.len()] = true;
        table
    }

    /// Asserts every documented guarantee of `chunk_text(text, params)` and returns
    /// the chunks.
    fn check<'a>(text: &'a str, params: &ChunkParams) -> Vec<Chunk<'a>> {
        let chunks = chunk_text(text, params);
        let graphemes = grapheme_boundaries(text);
        let context = |c: &Chunk| {
            format!(
                "chunk {} at {} ({} chars) with {params:?}",
                c.index,
                c.start,
                chars(c.text)
            )
        };
        let mut covered_until = 0;
        let mut previous: Option<&Chunk> = None;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index as usize, i, "{}", context(c));
            assert_eq!(
                &text[c.start..c.start + c.text.len()],
                c.text,
                "{}",
                context(c)
            );
            assert!(chars(c.text) <= params.size(), "{}", context(c));
            assert!(!c.text.trim().is_empty(), "{}", context(c));
            for pos in [c.start, c.start + c.text.len()] {
                // The one allowed split: inside a cluster longer than a whole chunk.
                let cluster = || {
                    let from = (0..pos).rev().find(|&i| graphemes[i]).unwrap_or(0);
                    let to = (pos..=text.len()).find(|&i| graphemes[i]).unwrap();
                    chars(&text[from..to])
                };
                assert!(
                    graphemes[pos] || cluster() > params.size(),
                    "split grapheme at {pos}: {}",
                    context(c)
                );
            }
            if params.strategy() != ChunkStrategy::Fixed {
                // Trimmed by cluster: a space carrying a combining mark is text.
                let blank = |g: Option<&str>| g.is_some_and(|g| g.trim().is_empty());
                assert!(!blank(c.text.graphemes(true).next()), "{}", context(c));
                assert!(!blank(c.text.graphemes(true).next_back()), "{}", context(c));
            }
            let gap = &text[covered_until.min(c.start)..c.start];
            assert!(
                gap.trim().is_empty(),
                "text before {} is in no chunk: {gap:?}",
                context(c)
            );
            if let Some(p) = previous {
                let p_end = p.start + p.text.len();
                let end = c.start + c.text.len();
                assert!(c.start > p.start, "start did not advance: {}", context(c));
                assert!(end > p_end, "end did not advance: {}", context(c));
                let shared = if c.start < p_end {
                    chars(&text[c.start..p_end])
                } else {
                    0
                };
                assert!(
                    shared <= params.overlap(),
                    "overlap {shared}: {}",
                    context(c)
                );
            }
            covered_until = covered_until.max(c.start + c.text.len());
            previous = Some(c);
        }
        let rest = &text[covered_until..];
        assert!(
            rest.trim().is_empty(),
            "text after the last chunk: {rest:?}"
        );
        chunks
    }

    /// Chars shared by each pair of consecutive chunks.
    fn overlaps(text: &str, chunks: &[Chunk]) -> Vec<usize> {
        chunks
            .windows(2)
            .map(|pair| {
                let end = pair[0].start + pair[0].text.len();
                if pair[1].start < end {
                    chars(&text[pair[1].start..end])
                } else {
                    0
                }
            })
            .collect()
    }

    /// English-like prose: sentences of 4..=20 words, paragraphs of 1..=6 sentences.
    fn prose(target_chars: usize, seed: u64) -> String {
        const WORDS: [&str; 12] = [
            "tenant",
            "vector",
            "queue",
            "chunk",
            "worker",
            "shard",
            "search",
            "index",
            "broker",
            "embedding",
            "document",
            "quota",
        ];
        let mut rng = Rng(seed);
        let mut out = String::new();
        while out.len() < target_chars {
            for s in 0..=rng.below(6) {
                if s > 0 {
                    out.push(' ');
                }
                for w in 0..4 + rng.below(17) {
                    if w > 0 {
                        out.push(' ');
                    }
                    let word = WORDS[rng.below(WORDS.len())];
                    if w == 0 {
                        // UAX #29 sees no sentence break before a lowercase word.
                        out.push_str(&word[..1].to_uppercase());
                        out.push_str(&word[1..]);
                    } else {
                        out.push_str(word);
                    }
                }
                out.push('.');
            }
            out.push_str("\n\n");
        }
        out
    }

    /// A tiny deterministic PRNG (SplitMix64), so generated cases are reproducible
    /// from their seed without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn params_enforce_ranges_and_name_the_field() {
        assert!(ChunkParams::new(500, 0, ChunkStrategy::Sentence).is_ok());
        assert!(ChunkParams::new(16_000, 1_000, ChunkStrategy::Fixed).is_ok());
        assert!(ChunkParams::new(500, 499, ChunkStrategy::Paragraph).is_ok());

        for size in [0, 499, 16_001, usize::MAX] {
            let err = ChunkParams::new(size, 0, ChunkStrategy::Sentence).unwrap_err();
            assert_eq!(err, ChunkParamError::Size(size));
            assert_eq!(err.field(), "chunk_size");
            let message = err.to_string();
            assert!(message.contains("chunk_size") && message.contains("500"));
            assert!(message.contains("16000"), "{message}");
        }
        let err = ChunkParams::new(4_000, 1_001, ChunkStrategy::Sentence).unwrap_err();
        assert_eq!(err.field(), "chunk_overlap");
        assert!(err.to_string().contains("between 0 and 1000"), "{err}");
        let err = ChunkParams::new(600, 600, ChunkStrategy::Sentence).unwrap_err();
        assert_eq!(
            err,
            ChunkParamError::OverlapNotBelowSize {
                overlap: 600,
                size: 600
            }
        );
        assert_eq!(err.field(), "chunk_overlap");
        assert!(
            err.to_string().contains("less than chunk_size (600)"),
            "{err}"
        );

        let defaults = ChunkParams::default();
        assert_eq!(
            (defaults.size(), defaults.overlap(), defaults.strategy()),
            (4_000, 200, ChunkStrategy::Sentence)
        );
    }

    #[test]
    fn strategy_names_round_trip() {
        assert_eq!(ChunkStrategy::default(), ChunkStrategy::Sentence);
        for strategy in ChunkStrategy::ALL {
            let json = serde_json::to_string(&strategy).unwrap();
            assert_eq!(json, format!("\"{}\"", strategy.as_str()));
            assert_eq!(
                serde_json::from_str::<ChunkStrategy>(&json).unwrap(),
                strategy
            );
            assert_eq!(
                strategy.as_str().parse::<ChunkStrategy>().unwrap(),
                strategy
            );
            assert_eq!(strategy.to_string(), strategy.as_str());
        }
        assert_eq!(
            "paragraph".parse::<ChunkStrategy>().unwrap(),
            ChunkStrategy::Paragraph
        );
        assert!(serde_json::from_str::<ChunkStrategy>("\"sentence\"").is_err());
        let err = "TOKEN".parse::<ChunkStrategy>().unwrap_err();
        assert!(err.to_string().contains("chunking_strategy"), "{err}");
    }

    #[test]
    fn empty_and_whitespace_only_text_give_no_chunks() {
        for strategy in ChunkStrategy::ALL {
            for text in ["", " ", "\n\n\n", "\r\n\t \u{3000}\u{a0}\u{2029}"] {
                assert!(chunk_text(text, &params(500, 100, strategy)).is_empty());
            }
            let long_space = " \n".repeat(50_000);
            assert!(chunk_text(&long_space, &params(500, 100, strategy)).is_empty());
        }
    }

    #[test]
    fn short_text_is_one_trimmed_chunk() {
        let text = "  \n Hello, tenant. How are you?  \n";
        for strategy in [ChunkStrategy::Sentence, ChunkStrategy::Paragraph] {
            let chunks = check(text, &params(500, 200, strategy));
            assert_eq!(chunks.len(), 1);
            assert_eq!(chunks[0].text, "Hello, tenant. How are you?");
            assert_eq!(chunks[0].start, 4);
        }
        let fixed = check(text, &params(500, 200, ChunkStrategy::Fixed));
        assert_eq!(fixed.len(), 1);
        assert_eq!(fixed[0].text, "Hello, tenant. How are you?  \n");
    }

    #[test]
    fn sizes_are_respected_for_every_strategy() {
        let text = prose(60_000, 1);
        for strategy in ChunkStrategy::ALL {
            for (size, overlap) in [
                (500, 0),
                (500, 499),
                (777, 100),
                (4_000, 200),
                (16_000, 1_000),
            ] {
                let chunks = check(&text, &params(size, overlap, strategy));
                assert!(chunks.len() >= chars(&text) / size, "{strategy} {size}");
                // Packing is greedy: no chunk but the last is less than half full
                // (PARAGRAPH ends a chunk early rather than split a paragraph, and a
                // large overlap may be shortened to a sentence start).
                if strategy == ChunkStrategy::Paragraph || overlap > size / 4 {
                    continue;
                }
                for c in &chunks[..chunks.len() - 1] {
                    assert!(
                        chars(c.text) > size / 2,
                        "{strategy} {size}: {}",
                        chars(c.text)
                    );
                }
            }
        }
    }

    #[test]
    fn sentence_chunks_end_at_sentence_ends() {
        let text = prose(30_000, 2);
        for overlap in [0, 200] {
            let chunks = check(&text, &params(1_000, overlap, ChunkStrategy::Sentence));
            for c in &chunks {
                assert!(c.text.ends_with('.'), "{:?}", &c.text[c.text.len() - 20..]);
            }
            if overlap == 0 {
                // Without overlap, chunks also start at sentence starts.
                for c in &chunks {
                    assert!(c.text.starts_with(|ch: char| ch.is_alphabetic()));
                    let before = text[..c.start].trim_end();
                    assert!(before.is_empty() || before.ends_with('.'));
                }
            }
        }
    }

    #[test]
    fn overlap_is_present_and_bounded() {
        let text = prose(50_000, 3);
        for strategy in ChunkStrategy::ALL {
            for overlap in [50, 200, 400] {
                let chunks = check(&text, &params(1_000, overlap, strategy));
                let shared = overlaps(&text, &chunks);
                // Bounded is asserted by `check`; present means most pairs share text.
                let with_overlap = shared.iter().filter(|&&n| n > 0).count();
                assert!(
                    with_overlap * 10 >= shared.len() * 8,
                    "{strategy} {overlap}: {with_overlap} of {}",
                    shared.len()
                );
                if strategy == ChunkStrategy::Fixed {
                    // FIXED overlaps by exactly `overlap` chars.
                    assert!(shared.iter().all(|&n| n == overlap), "{shared:?}");
                }
            }
        }
    }

    #[test]
    fn overlap_starts_on_a_sentence_or_word() {
        let text = prose(20_000, 4);
        let chunks = check(&text, &params(1_000, 300, ChunkStrategy::Sentence));
        for c in &chunks[1..] {
            let before = text[..c.start].chars().next_back();
            assert!(
                before.is_none_or(char::is_whitespace),
                "{:?}",
                &c.text[..20]
            );
        }
    }

    #[test]
    fn zero_overlap_chunks_are_disjoint() {
        let text = prose(20_000, 5);
        for strategy in ChunkStrategy::ALL {
            let chunks = check(&text, &params(600, 0, strategy));
            assert!(overlaps(&text, &chunks).iter().all(|&n| n == 0));
        }
    }

    #[test]
    fn fixed_windows_are_exactly_size() {
        let text = "abcdefghij".repeat(1_000);
        let chunks = check(&text, &params(512, 12, ChunkStrategy::Fixed));
        for c in &chunks[..chunks.len() - 1] {
            assert_eq!(chars(c.text), 512);
        }
        assert_eq!(chunks[1].start, 500);
        assert!(chars(chunks.last().unwrap().text) <= 512);
    }

    #[test]
    fn paragraph_chunks_start_at_paragraphs() {
        let paragraphs: Vec<String> = (0..40)
            .map(|i| {
                format!("Paragraph {i} first line.\nIt continues here. And ends.").repeat(1 + i % 4)
            })
            .collect();
        for separator in ["\n\n", "\r\n\r\n", "\n  \t\n\n"] {
            let text = paragraphs.join(separator);
            let chunks = check(&text, &params(600, 0, ChunkStrategy::Paragraph));
            for c in &chunks {
                assert!(c.text.starts_with("Paragraph "), "{:?}", &c.text[..20]);
                assert!(c.text.ends_with("ends."));
                // A chunk holds whole paragraphs: it ends where one does.
                let after = &text[c.start + c.text.len()..];
                assert!(after.is_empty() || after.starts_with(separator));
            }
            assert!(chunks.len() < paragraphs.len(), "paragraphs were packed");
        }
    }

    #[test]
    fn long_paragraph_falls_back_to_sentences() {
        let long = "A sentence in a very long paragraph goes on. ".repeat(60);
        let text = format!("Short intro.\n\n{long}\n\nShort outro.");
        let chunks = check(&text, &params(500, 0, ChunkStrategy::Paragraph));
        assert_eq!(chunks[0].text, "Short intro.");
        assert!(chunks.len() > long.len() / 500);
        for c in &chunks {
            assert!(c.text.ends_with('.'), "{:?}", c.text);
        }
    }

    #[test]
    fn sentence_longer_than_size_is_cut_between_words() {
        let text = format!("Intro. {} Outro.", "word ".repeat(1_000).trim_end());
        let chunks = check(&text, &params(500, 0, ChunkStrategy::Sentence));
        for c in &chunks {
            assert!(c.text == "Intro." || c.text.ends_with("word") || c.text.ends_with("Outro."));
            assert!(!c.text.starts_with("ord"));
        }
    }

    #[test]
    fn one_huge_sentence_without_spaces() {
        let text = "x".repeat(100 * 1024);
        for strategy in ChunkStrategy::ALL {
            let chunks = check(&text, &params(1_000, 100, strategy));
            assert!(chunks.len() >= 100 * 1024 / 1_000);
            for c in &chunks[..chunks.len() - 1] {
                assert_eq!(chars(c.text), 1_000);
            }
        }
    }

    #[test]
    fn cjk_without_spaces_uses_full_stops_and_graphemes() {
        let sentence = "日本語の文章はスペースを使わずに書かれます。";
        let text = sentence.repeat(300);
        let chunks = check(&text, &params(500, 50, ChunkStrategy::Sentence));
        for c in &chunks {
            assert!(c.text.ends_with('。'));
        }
        let unpunctuated = "漢字".repeat(5_000);
        check(&unpunctuated, &params(500, 50, ChunkStrategy::Sentence));
    }

    /// Texts whose every `size`-th char falls inside a multi-char cluster or a
    /// multi-byte char, for each strategy and several sizes and overlaps.
    #[test]
    fn multibyte_and_emoji_at_boundaries() {
        let pieces = [
            "é",        // precomposed, 2 bytes
            "e\u{301}", // e + combining acute: 2 chars, 1 cluster
            "日本語",   // 3 bytes each
            "مَرْحَبًا",    // Arabic with harakat
            "क्षत्रिय",   // Devanagari conjuncts and vowel signs
            "👩‍👩‍👧‍👦",       // ZWJ family: 7 chars
            "🇫🇷",       // regional indicator pair
            "👍🏽",       // skin tone modifier
            "🏳️‍🌈",       // flag with variation selector and ZWJ
        ];
        for piece in pieces {
            for separator in ["", " ", ". "] {
                let text = [piece; 700].join(separator);
                for strategy in ChunkStrategy::ALL {
                    for (size, overlap) in [(500, 0), (501, 7), (503, 250), (997, 499)] {
                        let chunks = check(&text, &params(size, overlap, strategy));
                        assert!(!chunks.is_empty());
                    }
                }
            }
        }
        // Flags next to each other: a cut between the two halves of one would turn
        // 🇫🇷🇩🇪 into 🇷🇩.
        let flags = "🇫🇷🇩🇪🇯🇵".repeat(1_000);
        for strategy in ChunkStrategy::ALL {
            check(&flags, &params(501, 33, strategy));
        }
    }

    /// A cluster whose first char would be the `size`-th moves whole to the next
    /// chunk; one whose last char is the `size`-th stays.
    #[test]
    fn a_cluster_across_the_size_limit_moves_whole() {
        for cluster in ["e\u{301}", "مَ", "क्षि", "👩‍👩‍👧‍👦", "🇫🇷", "👍🏽", "🏳️‍🌈"]
        {
            let n = chars(cluster);
            for strategy in ChunkStrategy::ALL {
                let text = format!("{}{cluster}{}", "x".repeat(499), "y".repeat(600));
                let chunks = check(&text, &params(500, 0, strategy));
                assert_eq!(chunks[0].text, "x".repeat(499), "{cluster} {strategy}");
                assert!(chunks[1].text.starts_with(cluster), "{cluster} {strategy}");

                let fits = format!("{}{cluster}", "x".repeat(500 - n));
                let text = format!("{fits}{}", "y".repeat(600));
                let chunks = check(&text, &params(500, 0, strategy));
                assert_eq!(chunks[0].text, fits, "{cluster} {strategy}");
            }
        }
        // Two flags: a cut after an odd number of regional indicators would turn
        // 🇫🇷🇩🇪 into 🇷🇩.
        let text = format!("{}🇫🇷🇩🇪{}", "x".repeat(497), "y".repeat(600));
        let chunks = check(&text, &params(500, 0, ChunkStrategy::Fixed));
        assert_eq!(chunks[0].text, format!("{}🇫🇷", "x".repeat(497)));
        assert!(chunks[1].text.starts_with("🇩🇪"));
    }

    #[test]
    fn a_cluster_longer_than_size_is_cut_between_chars() {
        let mut text = String::from("a");
        text.push_str(&"\u{301}".repeat(2_000));
        text.push_str(" tail.");
        for strategy in ChunkStrategy::ALL {
            // `check` allows a split only inside a cluster longer than `size`.
            let chunks = check(&text, &params(500, 100, strategy));
            assert!(chunks.len() >= 4, "{strategy}");
        }
    }

    #[test]
    fn nul_bytes_and_control_chars_are_text() {
        let text = "before\0after. \0\0\0 more\u{1}text.\n\n".repeat(400);
        for strategy in ChunkStrategy::ALL {
            let chunks = check(&text, &params(500, 100, strategy));
            assert!(chunks.iter().any(|c| c.text.contains('\0')));
        }
        let only_nul = "\0".repeat(2_000);
        assert_eq!(
            check(&only_nul, &params(500, 0, ChunkStrategy::Sentence)).len(),
            4
        );
    }

    #[test]
    fn crlf_text() {
        let text = "First paragraph line one.\r\nLine two.\r\n\r\n".repeat(200);
        for strategy in ChunkStrategy::ALL {
            let chunks = check(&text, &params(500, 60, strategy));
            if strategy != ChunkStrategy::Fixed {
                assert!(chunks.iter().all(|c| c.text.ends_with('.')));
            }
        }
    }

    #[test]
    fn a_megabyte_is_covered() {
        let text = prose(1024 * 1024, 6);
        for strategy in ChunkStrategy::ALL {
            let chunks = check(&text, &params(4_000, 200, strategy));
            assert!(chunks.len() > 1024 * 1024 / 4_000);
        }
    }

    /// Property-style: random mixtures of the awkward pieces above, random
    /// parameters, every guarantee checked. The seed is in the failure message.
    #[test]
    fn invariants_hold_on_generated_text() {
        const PIECES: [&str; 38] = [
            "word",
            "tenant",
            "a",
            "Capital",
            " ",
            " ",
            "  ",
            "\n",
            "\n\n",
            "\r\n\r\n",
            ". ",
            "? ",
            "...",
            "\"",
            "\u{201D}",
            "。",
            "\t",
            "é",
            "e\u{301}",
            "日本語",
            "مَرْحَبًا",
            "क्षत्रिय",
            "👩‍👩‍👧‍👦",
            "🇫🇷",
            "👍🏽",
            "\0",
            "\u{a0}",
            "!",
            // Clusters that lean on their neighbours: a lone combining mark (on a
            // space, it makes the space text), ZWJ, variation selector, a single
            // regional indicator, an Arabic prepended mark, Hangul jamo; lone CR and
            // line separator.
            "\u{301}",
            "\u{200D}",
            "\u{FE0F}",
            "\u{1F1E6}",
            "\u{600}",
            "\u{1100}",
            "\u{1161}",
            "\r",
            "\u{2028}",
            "\u{3000}",
        ];
        for seed in 0..400 {
            let mut rng = Rng(seed);
            let target = rng.below(6_000);
            let mut text = String::new();
            // Runs of one piece make long words, long whitespace and long sentences.
            while chars(&text) < target {
                let piece = PIECES[rng.below(PIECES.len())];
                let longest = if rng.below(10) == 0 { 400 } else { 3 };
                for _ in 0..1 + rng.below(longest) {
                    text.push_str(piece);
                }
            }
            let size = MIN_CHUNK_SIZE + rng.below(700);
            let overlap = rng.below(size.min(MAX_CHUNK_OVERLAP + 1));
            let strategy = ChunkStrategy::ALL[rng.below(3)];
            let p = params(size, overlap, strategy);
            let result = std::panic::catch_unwind(|| check(&text, &p).len());
            assert!(result.is_ok(), "seed {seed} failed");
        }
    }
}
