// Preact + htm, vendored (see vendor/VERSIONS): `html` is JSX without a build step.
import { h, render, Fragment } from "./vendor/preact.mjs";
import htm from "./vendor/htm.mjs";

export const html = htm.bind(h);
export { h, render, Fragment };
export { useState, useEffect, useMemo, useRef, useCallback, useReducer } from "./vendor/hooks.mjs";
