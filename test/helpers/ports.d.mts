/** A free loopback port below the ephemeral range (see ports.mjs). */
export function freePort(): Promise<number>;
