// The chat page as people use it, in headless Chromium driven by
// playwright-core, for tests/browser_test.go: three people at phone size,
// two on a long-lived server and one on the Lambda front end, see each other,
// chat, send a private message, come and go, and one of them loses her
// server and gets it back.
//
//   node chat.mjs
//
// The environment names what to use:
//
//   EDGESYNC_PLAYWRIGHT_NODE_MODULES  a node_modules folder holding playwright-core
//   EDGESYNC_CHROMIUM                 the Chromium binary
//   CHAT_VM_URL                       the chat page of the long-lived server
//   CHAT_LAMBDA_URL                   the chat page whose WebSocket is the emulated API
//   CHAT_SCREENSHOTS                  a folder for screenshots (optional)
//
// The script prints one JSON line for each thing it needs the test to do,
// {"do":"kill"} and {"do":"restart"}, and goes on when the test answers with
// a line on standard input. It ends with {"done":true} and exit status 0, or
// prints why it failed and exits with 1.
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(name + " is not set");
  return v;
};
const req = createRequire(env("EDGESYNC_PLAYWRIGHT_NODE_MODULES") + "/");
const { chromium } = req("playwright-core");
const vmURL = env("CHAT_VM_URL");
const lambdaURL = env("CHAT_LAMBDA_URL");
const shots = process.env.CHAT_SCREENSHOTS || "";

const WAIT = 20000; // ms any one condition may take
const RECONNECT_WAIT = 30000; // the backoff is capped at 10 s
const WIDTH = 390, HEIGHT = 844;

const log = (...a) => console.error(new Date().toISOString(), ...a);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const input = readline.createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
// ask has the test do something and waits until it is done.
async function ask(what) {
  say({ do: what });
  const { value, done } = await lines.next();
  if (done || value.trim() !== "ok") throw new Error("the test did not " + what + ": " + (value || "no answer"));
}

function check(ok, what) {
  if (!ok) throw new Error(what);
}

const started = Date.now();

// A person is one browser context (its own storage) with the chat page open.
class Person {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
  }

  // people returns the presence list as [{user, instance, you}].
  people() {
    return this.page.$$eval("#people .person", (els) => els.map((b) => ({
      id: b.dataset.id,
      user: b.querySelector(".user").textContent,
      instance: (b.querySelector(".instance") || { textContent: "" }).textContent,
      you: b.classList.contains("me"),
    })));
  }

  // awaitPeople waits until the presence list holds exactly users, or at
  // least users when some may be listed twice (the record of a dead
  // instance's peer lasts until it expires), each with an instance and the
  // person's own entry marked, and returns it.
  async awaitPeople(users, atLeast = false) {
    const want = [...users].sort();
    try {
      await this.page.waitForFunction(([want, atLeast]) => {
        const got = [...document.querySelectorAll("#people .person .user")].map((e) => e.textContent).sort();
        if (atLeast) return want.every((u) => got.includes(u));
        return got.length === want.length && got.every((u, i) => u === want[i]);
      }, [want, atLeast], { timeout: WAIT });
    } catch (err) {
      throw new Error(this.name + " sees " + JSON.stringify(await this.people()) + ", want " + JSON.stringify(want) + ": " + err.message);
    }
    const list = await this.people();
    log(this.name, "sees", list.map((p) => p.user + (p.you ? " (you)" : "") + " " + p.instance).join(", "));
    for (const p of list) {
      check(/^on \S/.test(p.instance), this.name + " sees " + p.user + " without an instance: " + JSON.stringify(p));
    }
    const mine = list.filter((p) => p.you);
    check(mine.length === 1 && mine[0].user === this.name, this.name + "'s list does not mark their own entry alone: " + JSON.stringify(list));
    return list;
  }

  // awaitEntry waits for an entry of the message list with the class kind
  // ("msg" for a room message from someone else) that contains text, and
  // returns what it shows.
  async awaitEntry(kind, text) {
    const selector = kind === "msg" ? "li.msg:not(.mine):not(.dm):not(.dm-sent)" : "li." + kind;
    const entry = this.page.locator("#messages " + selector, { hasText: text }).last();
    try {
      await entry.waitFor({ timeout: WAIT });
    } catch (err) {
      const all = await this.page.$$eval("#messages li", (els) => els.map((e) => e.className + ": " + e.textContent));
      throw new Error(this.name + " did not get a " + kind + " entry with " + JSON.stringify(text) + "; the list: " + JSON.stringify(all) + ": " + err.message);
    }
    return entry.evaluate((li) => {
      const t = li.querySelector("time");
      return {
        from: (li.querySelector(".from") || { textContent: "" }).textContent,
        instance: (li.querySelector(".instance") || { textContent: "" }).textContent,
        text: (li.querySelector(".text") || li).textContent,
        datetime: t ? t.dateTime : "",
        time: t ? t.textContent : "",
      };
    });
  }

  async send(text) {
    await this.page.fill("#text", text);
    await this.page.click("#send");
    // Sent: the composer is cleared for the next message.
    await this.page.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: WAIT });
  }

  async connected() {
    await this.page.waitForFunction(() => {
      const b = document.getElementById("banner");
      return b.hidden && !document.getElementById("text").disabled && !document.getElementById("send").disabled;
    }, null, { timeout: RECONNECT_WAIT });
  }

  async fits(when) {
    const w = await this.page.evaluate(() => document.documentElement.scrollWidth);
    check(w <= WIDTH, this.name + "'s page is " + w + " px wide " + when + ", wider than the " + WIDTH + " px screen");
  }

  async shot(name) {
    if (shots) await this.page.screenshot({ path: path.join(shots, name + ".png"), fullPage: true });
  }
}

let browser;

// join opens the page at url in a new context as name, and waits until
// the server has welcomed them. Each person gets their own time zone, so
// that times shown are local to the reader.
async function join(name, url, timezoneId) {
  const context = await browser.newContext({ viewport: { width: WIDTH, height: HEIGHT }, locale: "en-GB", timezoneId });
  const page = await context.newPage();
  page.on("pageerror", (err) => log(name, "page error:", err.message));
  page.on("console", (m) => { if (m.type() === "error") log(name, "console:", m.text()); });
  await page.goto(url);
  await page.fill("#name", name);
  await page.click("#join-button");
  const p = new Person(name, context, page);
  await welcomed(p);
  log(name, "joined", url);
  return p;
}

async function welcomed(p) {
  await p.page.waitForFunction((name) => !document.getElementById("me").hidden &&
    document.getElementById("me-user").textContent === name, p.name, { timeout: WAIT });
  await p.connected();
}

// localTime is how a reader in timezoneId sees the time of datetime.
function localTime(datetime, timeZone) {
  return new Date(datetime).toLocaleTimeString("en-GB", { timeZone, hour: "2-digit", minute: "2-digit" });
}

// sameMessage checks that what reader shows of a message is what its
// sender sent: sender, sender's instance, text, and the sender's time.
function sameMessage(reader, got, sent, senderName, senderInstance, tz) {
  const what = reader + " shows " + JSON.stringify(got) + " for " + JSON.stringify(sent);
  check(got.from === senderName, what + ": wrong sender");
  check(got.instance === senderInstance, what + ": wrong instance");
  check(got.text === sent.text, what + ": wrong text");
  check(got.datetime === sent.datetime, what + ": not the time the sender sent");
  check(got.time === localTime(got.datetime, tz), what + ": time not shown as local time in " + tz);
}

async function main() {
  browser = await chromium.launch({
    executablePath: env("EDGESYNC_CHROMIUM"),
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  log("browser", browser.version());

  // ann on the long-lived server, then bob on the Lambda front end.
  const ann = await join("ann", vmURL, "Europe/Berlin");
  const annInstance = await ann.page.textContent("#me-instance");
  check(/^on \S/.test(annInstance), "ann's own instance is not shown: " + JSON.stringify(annInstance));
  await ann.awaitPeople(["ann"]);
  const bob = await join("bob", lambdaURL, "America/New_York");
  const bobInstance = await bob.page.textContent("#me-instance");
  check(bobInstance !== annInstance, "ann and bob are both " + annInstance);
  await bob.awaitPeople(["ann", "bob"]);
  await ann.awaitPeople(["ann", "bob"]);
  await ann.awaitEntry("notice", "bob joined");
  const seen = await bob.people();
  check(seen.find((p) => p.user === "ann").instance === annInstance, "bob sees ann on another instance: " + JSON.stringify(seen));
  check((await ann.people()).find((p) => p.user === "bob").instance === bobInstance, "ann sees bob on another instance");
  log("presence: ann", annInstance, "bob", bobInstance);

  // Messages both ways, with sender, instance and the sender's time.
  const long = "a-very-long-word-" + "x".repeat(300);
  await ann.send("hello bob " + long);
  let sent = await ann.awaitEntry("mine", "hello bob");
  check(sent.from === "ann" && sent.instance === annInstance, "ann's own message shows " + JSON.stringify(sent));
  let got = await bob.awaitEntry("msg", "hello bob");
  sameMessage("bob", got, sent, "ann", annInstance, "America/New_York");
  check(Date.parse(sent.datetime) >= started - 1000 && Date.parse(sent.datetime) <= Date.now() + 1000, "ann's message time " + sent.datetime + " is not now");

  await bob.send("hi ann, from the Lambda");
  sent = await bob.awaitEntry("mine", "hi ann");
  got = await ann.awaitEntry("msg", "hi ann");
  sameMessage("ann", got, sent, "bob", bobInstance, "Europe/Berlin");
  log("messages both ways");

  // cat comes in on the long-lived server: everyone sees her arrive.
  const cat = await join("cat", vmURL, "Asia/Tokyo");
  await cat.awaitPeople(["ann", "bob", "cat"]);
  await ann.awaitPeople(["ann", "bob", "cat"]);
  await bob.awaitPeople(["ann", "bob", "cat"]);
  await ann.awaitEntry("notice", "cat joined");
  await bob.awaitEntry("notice", "cat joined");

  // dan, with the longest name there is, opens another room, on the
  // Lambda front end: he is alone there, and nobody in the first room sees
  // him.
  const dan = await join("dan" + "n".repeat(29), lambdaURL + "?room=side", "UTC");
  await dan.awaitPeople([dan.name]);
  check((await dan.page.textContent("h1")) === "Chat · side", "dan's page does not name his room");
  await dan.send("anyone in the side room?");
  await dan.fits("with a long name");
  await dan.context.close();

  // A private message from ann to bob, chosen in the list: bob gets it,
  // marked private; ann sees it sent; cat does not see it.
  await ann.page.locator("#people .person", { hasText: "bob" }).click();
  await ann.page.locator("#dm-target").waitFor({ timeout: WAIT });
  check((await ann.page.textContent("#dm-user")) === "bob", "ann's private message is not to bob");
  await ann.send("psst, only for bob");
  const dmSent = await ann.awaitEntry("dm-sent", "psst");
  check(dmSent.from === "bob", "ann's sent private message names " + JSON.stringify(dmSent.from) + ", not bob");
  const dm = await bob.awaitEntry("dm", "psst");
  check(dm.from === "ann" && dm.instance === annInstance, "bob's private message shows " + JSON.stringify(dm));
  check(dm.time === localTime(dm.datetime, "America/New_York"), "the private message's time is not local: " + JSON.stringify(dm));
  await ann.page.click("#dm-cancel");
  await ann.page.locator("#dm-target").waitFor({ state: "hidden", timeout: WAIT });
  await ann.send("back to everyone");
  await cat.awaitEntry("msg", "back to everyone");
  await bob.awaitEntry("msg", "back to everyone");
  check(await cat.page.locator("#messages li", { hasText: "psst" }).count() === 0, "cat saw ann's private message to bob");
  for (const p of [ann, bob, cat]) {
    check(await p.page.locator("#messages li", { hasText: "dan" }).count() === 0, p.name + " heard of dan, in another room");
  }
  check(await bob.page.locator("#messages li.msg:not(.dm)", { hasText: "psst" }).count() === 0, "bob got the private message as a room message too");
  log("private message");

  for (const p of [ann, bob, cat]) await p.fits("after a long word");
  await ann.shot("ann");
  await bob.shot("bob");

  // cat comes back: her name is remembered, she joins without asking.
  await cat.page.reload();
  await welcomed(cat);
  check(await cat.page.isHidden("#join"), "cat was asked her name again");
  await ann.awaitEntry("notice", "cat left");
  await bob.awaitPeople(["ann", "bob", "cat"]);

  // cat leaves: the others see her go.
  await cat.context.close();
  await ann.awaitPeople(["ann", "bob"]);
  await bob.awaitPeople(["ann", "bob"]);
  await bob.awaitEntry("notice", "cat left");
  log("join and leave");

  // ann's server dies: her page says so, and she cannot send; bob's, on
  // the Lambda front end, carries on.
  await ask("kill");
  try {
    await ann.page.waitForFunction(() => !document.getElementById("banner").hidden, null, { timeout: WAIT });
  } catch (err) {
    throw new Error("ann's page shows no banner without its server: " + err.message);
  }
  check(await ann.page.isDisabled("#text"), "ann can type into a dead connection");
  check(await ann.page.isDisabled("#send"), "ann can press send on a dead connection");
  const banner = await ann.page.textContent("#banner");
  check(/Disconnected/.test(banner) && /Retrying at \d\d:\d\d:\d\d/.test(banner), "the banner says " + JSON.stringify(banner));
  check(await bob.page.isHidden("#banner") && await bob.page.isEnabled("#text"), "bob lost his connection with ann's server");
  await ann.fits("while disconnected");
  await ann.shot("ann-disconnected");
  log("disconnected:", banner.replace(/\s+/g, " ").trim());

  // The server is back on the same port: ann's page reconnects by itself.
  await ask("restart");
  try {
    await ann.connected();
  } catch (err) {
    throw new Error("ann's page did not reconnect: " + (await ann.page.textContent("#banner")) + ": " + err.message);
  }
  await ann.awaitPeople(["ann", "bob"], true);
  await ann.send("I am back");
  await bob.awaitEntry("msg", "I am back");
  await bob.send("welcome back");
  await ann.awaitEntry("msg", "welcome back");
  for (const p of [ann, bob]) await p.fits("at the end");
  log("reconnected");
}

let failed = false;
try {
  await main();
  say({ done: true });
} catch (err) {
  failed = true;
  log("FAIL:", err.message);
} finally {
  if (browser) await browser.close().catch(() => {});
  input.close();
}
process.exit(failed ? 1 : 0);
