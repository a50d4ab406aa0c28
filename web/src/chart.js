// A time chart (uPlot) of one numeric field: the device panel's and the SQL console's.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export class TimeChart {
  constructor(element) {
    this.element = element;
    this.plot = null;
    this.label = null;
  }

  /** Draws `points` ([ms, value] pairs, in time order) as `label`. */
  show(label, points) {
    this.element.dataset.points = String(points.length);
    const data = [points.map((p) => p[0] / 1000), points.map((p) => p[1])];
    if (this.plot && this.label === label) {
      this.plot.setData(data);
      return;
    }
    this.plot?.destroy();
    this.label = label;
    const width = Math.max(240, this.element.clientWidth || 320);
    this.plot = new uPlot({
      width,
      height: 200,
      series: [{}, { label, stroke: '#1d4ed8', width: 2, points: { show: false } }],
      axes: [{}, { size: 60 }],
      legend: { live: false },
    }, data, this.element);
  }

  clear() {
    this.plot?.destroy();
    this.plot = null;
    this.label = null;
    this.element.dataset.points = '0';
  }
}
