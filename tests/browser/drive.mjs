// A person at a real browser: headless Chromium (Debian's /usr/bin/chromium,
// or $LATCHKEY_CHROMIUM; never a downloaded one) driven by playwright-core
// through the test provider's login and consent pages (oidc-provider's
// devInteractions) to Latchkey's loopback callback page, which it then
// reads as the person would see it.
//
//   node drive.mjs --url URL --login NAME --decision approve|deny|open \
//                  --screenshot PATH
//
// approve: sign in, press Continue on the consent page.
// deny:    sign in, press "[ Cancel ]" on the consent page (access_denied).
// open:    no sign-in: open URL, a link straight to the callback (a forged
//          one, with a `state` of its own).
//
// Prints one JSON line on stdout: the callback URL as requested, its status
// and headers, the page's title and visible text, how many scripts it has,
// every CSP violation and console message on it, and the screenshot path.
// Everything is bounded (DEADLINE_MS) and only 127.0.0.1 is reachable:
// anything else (the provider's page imports a web font) is aborted.

import { chromium } from 'playwright-core';

/** 60 s: the whole walk; a hang is a failure, reported as such. */
const DEADLINE_MS = 60_000;
/** 20 s: any one page or click. */
const STEP_MS = 20_000;

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      throw new Error(`usage: drive.mjs --url URL --login NAME --decision approve|deny|open --screenshot PATH (bad argument ${argv[i]})`);
    }
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const key of ['url', 'login', 'decision', 'screenshot']) {
    if (!out[key]) throw new Error(`drive.mjs: --${key} is required`);
  }
  if (!['approve', 'deny', 'open'].includes(out.decision)) {
    throw new Error(`drive.mjs: --decision must be approve, deny or open, not ${out.decision}`);
  }
  return out;
}

function isLoopback(url) {
  try {
    return new URL(url).hostname === '127.0.0.1';
  } catch {
    return false;
  }
}

function isCallback(url) {
  try {
    const u = new URL(url);
    return u.hostname === '127.0.0.1' && u.pathname === '/callback';
  } catch {
    return false;
  }
}

/** Signs in and answers the consent page; the callback's response. */
async function signIn(page, opts) {
  await page.goto(opts.url, { waitUntil: 'load' });
  // The login form: any login and password.
  await page.locator('input[name="login"]').fill(opts.login);
  await page.locator('input[name="password"]').fill('any password');
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    page.getByRole('button', { name: 'Sign-in' }).click(),
  ]);

  // The consent page.
  const responsePromise = page.waitForResponse((r) => isCallback(r.url()) && r.request().isNavigationRequest());
  if (opts.decision === 'deny') {
    await page.getByRole('link', { name: '[ Cancel ]' }).click();
  } else {
    await page.getByRole('button', { name: 'Continue' }).click();
  }
  return await responsePromise;
}

async function main() {
  const opts = args();
  const browser = await chromium.launch({
    executablePath: process.env.LATCHKEY_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // No proxy: the provider and the daemon are on loopback.
    args: ['--no-proxy-server', '--disable-gpu', '--no-first-run'],
    timeout: STEP_MS,
  });
  try {
    const context = await browser.newContext({ viewport: { width: 800, height: 500 } });
    // Every page records its own CSP violations; evaluate() reads them later.
    await context.addInitScript(() => {
      window.__cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__cspViolations.push({
          directive: e.violatedDirective,
          blocked: e.blockedURI,
          sample: e.sample,
        });
      });
    });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);

    const trail = [];
    const consoleOnCallback = [];
    let onCallback = false;
    page.on('framenavigated', (frame) => {
      if (frame === page.mainFrame()) {
        trail.push(frame.url());
        onCallback = isCallback(frame.url());
      }
    });
    page.on('console', (msg) => {
      if (onCallback || isCallback(page.url())) {
        consoleOnCallback.push({ type: msg.type(), text: msg.text() });
      }
    });

    let callbackRequested = null;
    await page.route('**/*', async (route) => {
      const url = route.request().url();
      if (!isLoopback(url)) return route.abort('blockedbyclient');
      if (isCallback(url) && route.request().isNavigationRequest() && !callbackRequested) {
        callbackRequested = url;
      }
      return route.continue();
    });

    let response;
    if (opts.decision === 'open') {
      // A link straight to the callback (a forged one, say).
      response = await page.goto(opts.url, { waitUntil: 'load' });
    } else {
      response = await signIn(page, opts);
    }

    await page.waitForLoadState('load');

    const title = await page.title();
    const text = await page.locator('body').innerText();
    const facts = await page.evaluate(() => ({
      scripts: document.scripts.length,
      inlineHandlers: [...document.querySelectorAll('*')].filter((el) =>
        [...el.attributes].some((a) => a.name.startsWith('on'))).length,
      stylesheets: document.styleSheets.length,
      violations: window.__cspViolations || [],
      background: getComputedStyle(document.body).backgroundColor,
    }));
    await page.screenshot({ path: opts.screenshot, fullPage: true });

    process.stdout.write(JSON.stringify({
      callback_url: callbackRequested || response.url(),
      status: response.status(),
      headers: await response.allHeaders(),
      title,
      text,
      ...facts,
      console: consoleOnCallback,
      trail,
      screenshot: opts.screenshot,
    }) + '\n');
  } finally {
    await browser.close();
  }
}

const deadline = setTimeout(() => {
  console.error(`drive.mjs: gave up after ${DEADLINE_MS / 1000} s`);
  process.exit(3);
}, DEADLINE_MS);

main().then(
  () => {
    clearTimeout(deadline);
  },
  (e) => {
    console.error(`drive.mjs: ${e && e.stack ? e.stack : e}`);
    process.exit(2);
  },
);
