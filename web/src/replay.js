// Replay: scrub through what the dashboard has received at a chosen speed. While it runs,
// the map, the league table and the charts show the race as it stood at the replay time;
// leaving it returns to live.

export class Replay {
  /**
   * `range()` gives [first, last] event times (ms) known; `draw(t)` shows the state at t,
   * or live when t is null.
   */
  constructor({ toggle, bar, play, speed, slider, label }, range, draw) {
    Object.assign(this, { toggle, bar, playButton: play, speed, slider, label, range, draw });
    this.time = null;
    this.playing = false;
    this.lastFrame = null;
    toggle.addEventListener('click', () => (this.time === null ? this.start() : this.stop()));
    play.addEventListener('click', () => (this.playing ? this.pause() : this.play()));
    slider.addEventListener('input', () => this.seek(Number(slider.value)));
  }

  get active() {
    return this.time !== null;
  }

  start() {
    const [first, last] = this.range();
    if (first == null) return;
    this.bar.hidden = false;
    this.toggle.setAttribute('aria-pressed', 'true');
    this.toggle.textContent = 'Back to live';
    this.slider.min = String(first);
    this.slider.max = String(last);
    this.seek(first);
  }

  stop() {
    this.pause();
    this.time = null;
    this.bar.hidden = true;
    this.toggle.setAttribute('aria-pressed', 'false');
    this.toggle.textContent = 'Replay';
    this.draw(null);
  }

  seek(t) {
    const [first, last] = this.range();
    this.slider.max = String(last);
    this.time = Math.min(Math.max(t, first), last);
    this.slider.value = String(this.time);
    this.label.textContent = new Date(this.time).toISOString().slice(11, 19);
    this.draw(this.time);
  }

  play() {
    this.playing = true;
    this.playButton.textContent = 'Pause';
    this.lastFrame = null;
    requestAnimationFrame((now) => this.frame(now));
  }

  pause() {
    this.playing = false;
    this.playButton.textContent = 'Play';
  }

  frame(now) {
    if (!this.playing || this.time === null) return;
    if (this.lastFrame !== null) {
      const [, last] = this.range();
      const next = this.time + (now - this.lastFrame) * Number(this.speed.value);
      this.seek(next);
      if (next >= last) {
        this.pause();
        return;
      }
    }
    this.lastFrame = now;
    requestAnimationFrame((t) => this.frame(t));
  }
}
