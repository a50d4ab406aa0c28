// A metric grid for the offline basemap: with no tiles, lines every 100 m, 1 km, … (whichever
// gives a handful across the view) let distances on the map be read, beside the scale bar.
import L from 'leaflet';

const STEPS_M = [10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];
const M_PER_DEGREE = 111_320;
/** At most this many lines across the view. */
const LINES_ACROSS = 8;

export class MetricGrid {
  constructor(map) {
    this.map = map;
    this.lines = L.polyline([], { color: '#94a3b8', weight: 1, opacity: 0.7, interactive: false, className: 'grid' }).addTo(map);
    const label = L.control({ position: 'bottomleft' });
    label.onAdd = () => {
      this.label = L.DomUtil.create('div', 'grid-label');
      return this.label;
    };
    label.addTo(map);
    map.on('moveend', () => this.draw());
    this.draw();
  }

  draw() {
    const b = this.map.getBounds();
    // Metres per degree of longitude at the view's middle: the grid is square there.
    const cos = Math.max(0.01, Math.cos((b.getCenter().lat * Math.PI) / 180));
    const widthM = (b.getEast() - b.getWest()) * M_PER_DEGREE * cos;
    const step = STEPS_M.find((s) => widthM / s <= LINES_ACROSS) ?? STEPS_M[STEPS_M.length - 1];
    const dLat = step / M_PER_DEGREE;
    const dLon = step / (M_PER_DEGREE * cos);
    const south = Math.max(-85, b.getSouth());
    const north = Math.min(85, b.getNorth());
    const lines = [];
    for (let lat = Math.ceil(south / dLat) * dLat; lat <= north; lat += dLat) lines.push([[lat, b.getWest()], [lat, b.getEast()]]);
    for (let lon = Math.ceil(b.getWest() / dLon) * dLon; lon <= b.getEast(); lon += dLon) lines.push([[south, lon], [north, lon]]);
    this.lines.setLatLngs(lines);
    this.label.textContent = `grid ${step >= 1000 ? `${step / 1000} km` : `${step} m`}`;
  }
}
