// The manager's JSON API under /api/v1, as the console uses it: the session token from
// sessionStorage in `Authorization: Bearer`, and every failure as an ApiError whose
// message is the words the API gave (`{"error": "..."}`).

const TOKEN_KEY = "damselfly.console.token";
// Relative to the page, so a console served under a path prefix still finds its API.
const API_BASE = "api/v1";

export type Id = string | number;

export interface Me {
  id: Id;
  name: string;
  role: string;
}

export interface SignIn {
  token: string;
  expires_at?: string | null;
}

export interface Cluster {
  id: Id;
  name: string;
  config?: Record<string, unknown> | null;
  scopes?: Record<string, unknown> | null;
  [key: string]: unknown;
}

/** A scheduler, seed peer or peer as the manager lists it. */
export interface Component {
  id: Id;
  cluster_id?: Id | null;
  host_id?: string | null;
  url?: string | null;
  idc?: string | null;
  location?: string | null;
  state?: string | null;
  last_keepalive_at?: string | null;
  uploaded_bytes?: number | null;
  served_bytes?: number | null;
  [key: string]: unknown;
}

export interface User {
  id: Id;
  name: string;
  role: string;
  [key: string]: unknown;
}

export interface AccessToken {
  id: Id;
  name: string;
  scopes?: string[];
  expires_at?: string | null;
  token?: string;
  [key: string]: unknown;
}

/** A host's part of placing one blob of a job. */
export interface JobHost {
  host_id: string;
  state: string; // pending, fetching, done, failed
  error?: string | null;
}

/** A manifest or blob a job places, in one cluster, and how far each host got. */
export interface JobBlob {
  digest: string;
  size?: number | null;
  kind?: string | null; // manifest or blob
  cluster_id?: Id | null;
  hosts?: JobHost[] | null;
}

/** A job as the manager answers it: never the credentials it was given, only whether it had any. */
export interface Job {
  id: Id;
  type: string;
  state: string; // PENDING, RUNNING, SUCCESS, FAILURE, CANCELLED
  cluster_ids?: Id[] | null;
  args?: Record<string, unknown> | null;
  created_by?: string | null;
  created_at?: string | null;
  updated_at?: string | null;
  error?: string | null;
  blobs?: JobBlob[] | null;
  [key: string]: unknown;
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }

  /** The session is gone (expired, revoked, or the manager forgot it): sign in again. */
  get unauthorized(): boolean {
    return this.status === 401;
  }

  get forbidden(): boolean {
    return this.status === 403;
  }
}

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  if (token === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
}

/** What the API said went wrong, in its own words when it gave any. */
function errorText(status: number, statusText: string, body: unknown, raw: string): string {
  if (body && typeof body === "object") {
    const obj = body as Record<string, unknown>;
    for (const key of ["error", "message", "detail"]) {
      const value = obj[key];
      if (typeof value === "string" && value) return value;
      if (value !== undefined && value !== null) return JSON.stringify(value);
    }
  }
  const text = raw.trim();
  if (text && text.length < 300 && !text.startsWith("<")) return text;
  return `${status} ${statusText || "error"}`.trim();
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(`${API_BASE}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "Cannot reach the manager: the network request failed.");
  }
  const raw = await response.text();
  let parsed: unknown = undefined;
  if (raw) {
    try {
      parsed = JSON.parse(raw);
    } catch {
      parsed = undefined;
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, errorText(response.status, response.statusText, parsed, raw));
  }
  return parsed as T;
}

export const api = {
  get: <T>(path: string) => request<T>("GET", path),
  post: <T>(path: string, body: unknown) => request<T>("POST", path, body),
  patch: <T>(path: string, body: unknown) => request<T>("PATCH", path, body),
  del: (path: string) => request<unknown>("DELETE", path),
};

/** A list answer, or an empty list when the API wrapped it in an object we do not know. */
export function asList<T>(value: unknown): T[] {
  if (Array.isArray(value)) return value as T[];
  if (value && typeof value === "object") {
    for (const key of ["items", "results", "data"]) {
      const inner = (value as Record<string, unknown>)[key];
      if (Array.isArray(inner)) return inner as T[];
    }
  }
  return [];
}

export function idPath(id: Id): string {
  return encodeURIComponent(String(id));
}
