// The alerts feed: devices going offline and online (the device_status stream) and runners
// finishing, newest first.
import { escapeHtml, clock } from './util.js';

const MAX_ALERTS = 200;

export class Alerts {
  constructor(list, badge, isVisible) {
    this.list = list;
    this.badge = badge;
    this.isVisible = isVisible;
    this.unseen = 0;
  }

  add(kind, text, at) {
    const item = document.createElement('li');
    item.className = `alert ${kind}`;
    item.dataset.kind = kind;
    item.innerHTML = `<time>${clock(at)}</time> ${escapeHtml(text)}`;
    this.list.prepend(item);
    while (this.list.children.length > MAX_ALERTS) this.list.lastChild.remove();
    if (!this.isVisible()) {
      this.unseen += 1;
      this.badge.textContent = String(this.unseen);
      this.badge.hidden = false;
    }
  }

  seen() {
    this.unseen = 0;
    this.badge.hidden = true;
  }

  /** A device_status record. */
  status(value) {
    const kind = value.status === 'online' ? 'online' : 'offline';
    this.add(kind, `${value.device} ${value.status} (${value.reason})`, value.at);
  }
}
