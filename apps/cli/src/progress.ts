import { SingleBar } from "cli-progress";

export interface Tally {
  done: number;
  completed: number;
  failed: number;
  rejected: number;
  inFlight: number;
}

const describe = (t: Tally) =>
  `${t.completed} completed, ${t.failed} failed, ${t.rejected} rejected, ${t.inFlight} in flight`;

/**
 * Progress of a long CLI run on stderr: a bar when stderr is a terminal, else one plain
 * line every `everyMs` (logs and CI keep a readable record). stdout stays the results'.
 */
export class Progress {
  private readonly bar: SingleBar | undefined;
  private readonly timer: NodeJS.Timeout | undefined;
  private last: Tally = { done: 0, completed: 0, failed: 0, rejected: 0, inFlight: 0 };

  constructor(
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    everyMs = 5_000,
  ) {
    if (stream.isTTY) {
      this.bar = new SingleBar(
        { format: "lines [{bar}] {value}/{total} | {tally}", hideCursor: true, stream, etaBuffer: 50 },
        undefined,
      );
      this.bar.start(total, 0, { tally: describe(this.last) });
    } else {
      this.timer = setInterval(() => this.line(), everyMs);
      this.timer.unref();
    }
  }

  update(t: Tally): void {
    this.last = { ...t };
    this.bar?.update(t.done, { tally: describe(t) });
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.bar?.stop();
  }

  private line(): void {
    this.stream.write(`citadel: ${this.last.done}/${this.total} lines: ${describe(this.last)}\n`);
  }
}
