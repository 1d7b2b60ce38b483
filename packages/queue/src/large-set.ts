import { Command } from "ioredis";
import type { RedisConn } from "./redis.js";

/**
 * A SET whose value is written to the socket as it is: the command's header, the
 * caller's buffer, then the trailer, three writes in order on the connection's socket.
 * ioredis encodes a command with a Buffer argument by copying all of it into one new
 * buffer (Command#toWritable): for a 1.7 MB input that is a second copy of the request
 * and 1.7 MB more of external memory, which is what makes V8 collect (issue 11).
 *
 * ioredis hands toWritable the socket the command goes to when it is sent on its own,
 * at once or from the offline queue, or again after a reconnect; only a pipeline writes
 * into a buffer of its own instead, so this command is never put in one.
 */
class WrittenInPlaceSet extends Command {
  private readonly value: Buffer;

  constructor(key: string, value: Buffer, rest: readonly (string | number)[]) {
    super("set", [key, value, ...rest.map(String)], { replyEncoding: "utf8" });
    this.value = value;
  }

  override toWritable(socket: NodeJS.WritableStream): string | Buffer {
    const args = this.args as (string | Buffer)[];
    let head = `*${args.length + 1}\r\n$3\r\nset\r\n`;
    for (const a of args) {
      if (a === this.value) {
        socket.write(`${head}$${a.length}\r\n`);
        socket.write(a);
        head = "\r\n";
      } else {
        const s = String(a);
        head += `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
      }
    }
    return head;
  }
}

/** `SET key value ...rest` with the value written as it is, not copied (see above). */
export async function setInPlace(
  conn: RedisConn,
  key: string,
  value: Buffer,
  ...rest: readonly (string | number)[]
): Promise<unknown> {
  // Both clients route a command by its first key (a cluster to its slot's node).
  return conn.sendCommand(new WrittenInPlaceSet(key, value, rest));
}
