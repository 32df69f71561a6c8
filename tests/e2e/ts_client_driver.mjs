// Drives the original Aegis TypeScript client (@onestepat4time/aegis-client, built) one call per stdin line.
// Input:  {"call": "<AegisClient method>", "args": [...]}  or  {"sdk": "<generated function>", "options": {...}}
// Output: {"ok": true, "result": ...}  or  {"ok": false, "error": "...", "status"?: n}
// Usage:  node ts_client_driver.mjs <path to the client's dist/index.js> <base url> [token]
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';

const [modulePath, baseUrl, token] = process.argv.slice(2);
const mod = await import(pathToFileURL(modulePath).href);
const client = token ? new mod.AegisClient(baseUrl, token) : new mod.AegisClient(baseUrl, '');

async function handle(req) {
  if (req.call) {
    const fn = client[req.call];
    if (typeof fn !== 'function') return { ok: false, error: `no method ${req.call}` };
    return { ok: true, result: await fn.apply(client, req.args ?? []) };
  }
  const fn = mod[req.sdk];
  if (typeof fn !== 'function') return { ok: false, error: `no sdk function ${req.sdk}` };
  const options = { ...(req.options ?? {}), baseUrl };
  if (token) options.auth = token;
  const { data, error, response } = await fn(options);
  if (error !== undefined) return { ok: false, status: response?.status, error };
  return { ok: true, status: response?.status, result: data ?? null };
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let out;
  try {
    out = await handle(JSON.parse(line));
  } catch (e) {
    out = { ok: false, error: String(e?.message ?? e) };
  }
  process.stdout.write(JSON.stringify(out ?? { ok: true, result: null }) + '\n');
}
