#!/usr/bin/env node
// Signs and verifies billing-provider webhooks with the providers' own SDKs,
// for dunningd's end-to-end tests (tests/src/signers.rs runs it). The body is
// read from stdin, raw; a signature or header value goes to stdout.
//
//   node sign.js stripe --secret S [--secret S2 …] --timestamp UNIX_SECS [--scheme v1|v0]
//       Stripe-Signature value from stripe.webhooks.generateTestHeaderString
//       ({payload, secret, timestamp, scheme}), one call per secret. With
//       several secrets the results are joined the way Stripe sends them
//       during a secret rotation, `t=T,v1=A,v1=B` (its parseHeader in
//       Webhooks.js collects every entry of the expected scheme).
//   node sign.js stripe-verify --secret S --header H [--now UNIX_SECS]
//       Exit 0 if stripe.webhooks.constructEvent(body, H, S) accepts (default
//       tolerance, 300 s; --now is passed as its receivedAt), else print the
//       SDK's error and exit 1.
//   node sign.js paddle --secret S --timestamp UNIX_SECS
//       Paddle-Signature value `ts=T;h1=HEX`, HEX = HMAC-SHA256 of `T:body`
//       (Paddle documents the scheme; its SDK has no signer). Printed only
//       after Paddle's SDK, new Paddle(key).webhooks.isSignatureValid(body,
//       S, value), accepted it; otherwise exit 1. The SDK is asked as of the
//       moment T: its only clock rule (WebhooksValidator, "ts + 5 s must not
//       be past") belongs to the receiver, so an old T still gets a signature
//       whose HMAC the SDK has checked.
//   node sign.js paddle-verify --secret S --header H [--now UNIX_SECS]
//       Exit 0 if isSignatureValid accepts at the real clock (or at --now),
//       else exit 1.
//
// Usage errors exit 2. Secrets are never printed.
'use strict';

const crypto = require('node:crypto');

function parseArgs(argv) {
  const args = { secret: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (!key.startsWith('--') || value === undefined) usage(`bad argument '${key}'`);
    const name = key.slice(2);
    if (name === 'secret') args.secret.push(value);
    else args[name] = value;
  }
  return args;
}

function usage(message) {
  process.stderr.write(`sign.js: ${message}\n`);
  process.exit(2);
}

function seconds(args, name) {
  const value = Number(args[name]);
  if (!Number.isInteger(value)) usage(`--${name} must be whole seconds, got '${args[name]}'`);
  return value;
}

// Runs the Paddle SDK as if the clock read `secs`: its validator reads `new Date()`.
function clockAt(secs) {
  const RealDate = Date;
  global.Date = class extends RealDate {
    constructor(...a) {
      super(...(a.length ? a : [secs * 1000]));
    }
    static now() {
      return secs * 1000;
    }
  };
}

async function paddleAccepts(body, secret, header) {
  const { Paddle } = require('@paddle/paddle-node-sdk');
  // The API key is not used to verify webhooks; the SDK only wants one to construct.
  return new Paddle('test-key-unused').webhooks.isSignatureValid(body, secret, header);
}

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  const args = parseArgs(rest);
  const body = require('node:fs').readFileSync(0).toString('utf8');
  if (args.secret.length === 0) usage('--secret is required');
  switch (command) {
    case 'stripe': {
      const stripe = require('stripe')('sk_test_unused');
      const timestamp = seconds(args, 'timestamp');
      const scheme = args.scheme || 'v1';
      const headers = args.secret.map((secret) =>
        stripe.webhooks.generateTestHeaderString({ payload: body, secret, timestamp, scheme }),
      );
      // Each is `t=T,SCHEME=SIG`; keep the first `t=T` and every signature.
      const t = headers[0].slice(0, headers[0].indexOf(','));
      const signatures = headers.map((h) => h.slice(h.indexOf(',') + 1));
      process.stdout.write(`${[t, ...signatures].join(',')}\n`);
      return;
    }
    case 'stripe-verify': {
      const stripe = require('stripe')('sk_test_unused');
      const receivedAt = args.now === undefined ? undefined : seconds(args, 'now') * 1000;
      try {
        stripe.webhooks.constructEvent(body, args.header, args.secret[0], undefined, undefined, receivedAt);
      } catch (err) {
        process.stderr.write(`stripe refused: ${err.message}\n`);
        process.exit(1);
      }
      return;
    }
    case 'paddle': {
      const timestamp = seconds(args, 'timestamp');
      const h1 = crypto.createHmac('sha256', args.secret[0]).update(`${timestamp}:${body}`).digest('hex');
      const header = `ts=${timestamp};h1=${h1}`;
      clockAt(timestamp);
      if (!(await paddleAccepts(body, args.secret[0], header))) {
        process.stderr.write('paddle refused its own signature\n');
        process.exit(1);
      }
      process.stdout.write(`${header}\n`);
      return;
    }
    case 'paddle-verify': {
      if (args.now !== undefined) clockAt(seconds(args, 'now'));
      let ok;
      try {
        ok = await paddleAccepts(body, args.secret[0], args.header || '');
      } catch (err) {
        process.stderr.write(`paddle refused: ${err.message}\n`);
        process.exit(1);
      }
      if (!ok) {
        process.stderr.write('paddle refused: signature not valid\n');
        process.exit(1);
      }
      return;
    }
    default:
      usage(`unknown command '${command}' (stripe, stripe-verify, paddle, paddle-verify)`);
  }
}

main().catch((err) => {
  process.stderr.write(`sign.js: ${err.message}\n`);
  process.exit(1);
});
