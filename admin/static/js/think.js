// Split a streamed answer into reasoning and content: `delta.reasoning_content` (or
// `delta.reasoning`) goes to reasoning as is; inside `content`, text between <think> and
// </think> is reasoning too, with tags that may be cut anywhere across chunks.

const OPEN = "<think>";
const CLOSE = "</think>";

export class ThinkSplitter {
  constructor() {
    this.content = "";
    this.reasoning = "";
    this.inThink = false;
    this.sawTag = false;
    this.pending = ""; // a possible partial tag held back until the next chunk
  }

  /** Add a delta's reasoning text. */
  addReasoning(text) {
    if (text) this.reasoning += text;
  }

  /** Add a delta's content text (may hold think tags). */
  addContent(text) {
    if (!text) return;
    let rest = this.pending + text;
    this.pending = "";
    while (rest) {
      const tag = this.inThink ? CLOSE : OPEN;
      const at = rest.indexOf(tag);
      // Some templates open the think block in the prompt: the answer then holds only the
      // closing tag, and everything before it was reasoning.
      if (!this.inThink && !this.sawTag) {
        const close = rest.indexOf(CLOSE);
        if (close !== -1 && (at === -1 || close < at)) {
          this.reasoning += this.content + rest.slice(0, close);
          this.content = "";
          this.sawTag = true;
          rest = rest.slice(close + CLOSE.length);
          continue;
        }
      }
      if (at === -1) {
        const keep = partialTagSuffix(rest, this.inThink || this.sawTag ? [tag] : [OPEN, CLOSE]);
        this.emit(rest.slice(0, rest.length - keep));
        this.pending = rest.slice(rest.length - keep);
        return;
      }
      this.emit(rest.slice(0, at));
      rest = rest.slice(at + tag.length);
      this.inThink = !this.inThink;
      this.sawTag = true;
    }
  }

  /** The stream ended: a held-back partial tag was plain text after all. */
  finish() {
    this.emit(this.pending);
    this.pending = "";
  }

  emit(text) {
    if (!text) return;
    if (this.inThink) this.reasoning += text;
    else this.content += text;
  }

  /** Content without the blank lines models put right after </think>. */
  get visibleContent() {
    return this.sawTag ? this.content.replace(/^\s+/, "") : this.content;
  }
}

/** Length of the longest suffix of `text` that is a proper prefix of one of `tags`. */
function partialTagSuffix(text, tags) {
  let best = 0;
  for (const tag of tags) {
    for (let n = Math.min(tag.length - 1, text.length); n > best; n -= 1) {
      if (text.endsWith(tag.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}
