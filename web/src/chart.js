// A time chart (uPlot) of one numeric field: the device panel's and the SQL console's.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export class TimeChart {
  constructor(element) {
    this.element = element;
    this.plot = null;
    this.label = null;
    // Dragging across the chart zooms in (uPlot); a double-click zooms back out.
    this.zoomed = false;
    element.addEventListener('dblclick', () => {
      this.zoomed = false;
    });
  }

  /** Draws `points` ([ms, value] pairs, in time order) as `label`. */
  show(label, points) {
    this.element.dataset.points = String(points.length);
    const data = [points.map((p) => p[0] / 1000), points.map((p) => p[1])];
    if (this.plot && this.label === label) {
      // New points keep a range the user zoomed into.
      this.plot.setData(data, !this.zoomed);
      return;
    }
    this.plot?.destroy();
    this.label = label;
    this.zoomed = false;
    const width = Math.max(240, this.element.clientWidth || 320);
    this.plot = new uPlot({
      width,
      height: 200,
      series: [{}, { label, stroke: '#1d4ed8', width: 2, points: { show: false } }],
      axes: [{}, { size: 60 }],
      legend: { live: false },
      hooks: { setSelect: [(u) => { if (u.select.width > 0) this.zoomed = true; }] },
    }, data, this.element);
  }

  clear() {
    this.plot?.destroy();
    this.plot = null;
    this.label = null;
    this.element.dataset.points = '0';
  }
}
