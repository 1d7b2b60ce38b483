import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { CitadelError, ModelName, ModelVersion } from "@citadel/contracts";

/**
 * Sealed artifacts on a file system (a volume, NFS or a synced bucket mount). Holds
 * ciphertext only; names are validated so a manifest cannot point outside the store.
 */
export class FsModelStore {
  constructor(readonly root: string) {}

  pathOf(name: string, version: string): string {
    if (!ModelName.safeParse(name).success || !ModelVersion.safeParse(version).success) {
      throw new CitadelError("MANIFEST_INVALID", "model name or version is not valid for the store");
    }
    return path.join(this.root, name, `${version}.sealed`);
  }

  async put(name: string, version: string, artifact: Uint8Array): Promise<string> {
    const file = this.pathOf(name, version);
    await mkdir(path.dirname(file), { recursive: true, mode: 0o750 });
    const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
    await writeFile(tmp, artifact, { mode: 0o640 });
    await rename(tmp, file);
    return file;
  }

  async get(name: string, version: string): Promise<Buffer> {
    try {
      return await readFile(this.pathOf(name, version));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        throw new CitadelError("ARTIFACT_MISSING", `no artifact for ${name}@${version} in the model store`);
      }
      throw err;
    }
  }
}
