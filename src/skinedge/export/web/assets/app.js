// Classifies a photo on this device with ONNX Runtime Web (WebAssembly, CPU), using the
// preprocessing of the model card that ships beside the model (model.card.json).
//
// Preprocessing, as skinedge.data.transforms.preprocess_image does it in Python:
//   EXIF orientation (the browser applies it when it decodes the photo), optional colour
//   constancy (Shades of Gray) and luminance equalisation on the full image, resize (crop: the
//   short side to S, then the centred S x S square; squash: both sides to S), scale to 0-1,
//   (x - mean) / std per channel, NCHW float32.
// The resize is Pillow's own algorithm (ImagingResample: separable, antialiased, 8-bit fixed
// point; horizontal pass, then vertical), so the page gives the Python runtime's input exactly
// for the same decoded pixels. What may still differ: JPEG decoding (the browser's decoder, and
// its colour management of photos with an ICC profile, e.g. Display P3), and equalisation, whose
// RGB <-> YCbCr conversion is floating point here and fixed point in PIL.
"use strict";

const state = { card: null, session: null, inputName: null, size: 0, batch: 1 };

function roundHalfEven(x) {  // Python's round(), for the crop offset
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function loadImage(src) {  // a URL, data URL or Blob -> a decoded, EXIF-upright <img>
  return new Promise((resolve, reject) => {
    const img = new Image();
    const url = src instanceof Blob ? URL.createObjectURL(src) : src;
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("this file is not an image the browser can read"));
    img.src = url;
  });
}

const FILTERS = {  // Pillow's filters: support and kernel (bicubic with a = -0.5)
  bilinear: { support: 1, kernel: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; } },
  bicubic: { support: 2, kernel: (x) => {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  } },
};
const PRECISION_BITS = 32 - 8 - 2;

// Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, its first input pixel
// and integer weights.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = [];
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const v = filter.kernel((x + xmin - center + 0.5) * ss);
      w.push(v);
      total += v;
    }
    const k = w.map((v) => {
      const f = total !== 0 ? v / total : v;
      return f < 0 ? Math.trunc(-0.5 + f * (1 << PRECISION_BITS))
                   : Math.trunc(0.5 + f * (1 << PRECISION_BITS));
    });
    out.push({ xmin, k });
  }
  return out;
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// RGBA bytes (w x h) -> RGBA bytes (tw x th), as PIL's Image.resize(filter) on an RGB image.
function resample(rgba, w, h, tw, th, name) {
  const filter = FILTERS[name];
  let src = rgba, width = w;
  if (tw !== w) {  // horizontal pass
    const coeffs = coefficients(w, tw, filter);
    const dst = new Uint8ClampedArray(tw * h * 4);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < tw; x++) {
        const { xmin, k } = coeffs[x];
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) ss += src[(y * w + xmin + i) * 4 + c] * k[i];
          dst[(y * tw + x) * 4 + c] = clip8(ss);
        }
        dst[(y * tw + x) * 4 + 3] = 255;
      }
    }
    src = dst;
    width = tw;
  }
  if (th !== h) {  // vertical pass
    const coeffs = coefficients(h, th, filter);
    const dst = new Uint8ClampedArray(width * th * 4);
    for (let y = 0; y < th; y++) {
      const { xmin: ymin, k } = coeffs[y];
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) ss += src[((ymin + i) * width + x) * 4 + c] * k[i];
          dst[(y * width + x) * 4 + c] = clip8(ss);
        }
        dst[(y * width + x) * 4 + 3] = 255;
      }
    }
    src = dst;
  }
  return src;
}

function canvasOf(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function shadesOfGray(data, p) {  // RGBA bytes in place; Finlayson & Trezzi, as in Python
  const sums = [0, 0, 0];
  const n = data.length / 4;
  for (let i = 0; i < data.length; i += 4) {
    for (let c = 0; c < 3; c++) sums[c] += Math.pow(data[i + c], p);
  }
  const illuminant = sums.map((s) => Math.pow(s / n, 1 / p));
  const norm = Math.max(Math.hypot(...illuminant), 1e-6);
  const gains = illuminant.map((v) => 1 / (Math.max(v / norm, 1e-6) * Math.sqrt(3)));
  for (let i = 0; i < data.length; i += 4) {
    for (let c = 0; c < 3; c++) data[i + c] = Math.floor(Math.min(255, data[i + c] * gains[c]));
  }
}

function equalizeLuminance(data) {  // PIL's ImageOps.equalize on Y of YCbCr, chroma kept
  const n = data.length / 4;
  const y = new Uint8ClampedArray(n), cb = new Float64Array(n), cr = new Float64Array(n);
  const hist = new Array(256).fill(0);
  for (let i = 0, j = 0; j < n; i += 4, j++) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    y[j] = 0.299 * r + 0.587 * g + 0.114 * b;
    cb[j] = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b;
    cr[j] = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b;
    hist[y[j]]++;
  }
  const used = hist.filter((v) => v > 0);
  const step = used.length > 1 ? Math.floor((n - used[used.length - 1]) / 255) : 0;
  if (!step) return;
  const lut = [];
  for (let i = 0, acc = Math.floor(step / 2); i < 256; i++) {
    lut.push(Math.min(255, Math.floor(acc / step)));
    acc += hist[i];
  }
  for (let i = 0, j = 0; j < n; i += 4, j++) {
    const v = lut[y[j]];
    data[i] = v + 1.402 * (cr[j] - 128);
    data[i + 1] = v - 0.344136 * (cb[j] - 128) - 0.714136 * (cr[j] - 128);
    data[i + 2] = v + 1.772 * (cb[j] - 128);
  }
}

// A decoded image -> {tensor: Float32Array (3*S*S, NCHW), pixels: the S x S canvas}.
function preprocess(img) {
  const pre = state.card.preprocess;
  const size = pre.input_size;
  const width = img.naturalWidth || img.width, height = img.naturalHeight || img.height;
  const full = canvasOf(width, height).getContext("2d", { willReadFrequently: true });
  full.drawImage(img, 0, 0);
  let rgba = full.getImageData(0, 0, width, height).data;
  if (pre.color_constancy === "shades_of_gray") shadesOfGray(rgba, pre.shades_of_gray_p);
  if (pre.equalize) equalizeLuminance(rgba);
  let tw = size, th = size;
  if (pre.resize_mode === "crop") {
    if (width <= height) th = Math.trunc(size * height / width);
    else tw = Math.trunc(size * width / height);
  }
  if (tw !== width || th !== height) rgba = resample(rgba, width, height, tw, th, pre.interpolation);
  const top = roundHalfEven((th - size) / 2), left = roundHalfEven((tw - size) / 2);
  const plane = size * size;
  const tensor = new Float32Array(3 * plane);
  const crop = new Uint8ClampedArray(4 * plane);
  const f = Math.fround;
  const mean = pre.mean.map(f), std = pre.std.map(f);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const p = y * size + x, q = ((top + y) * tw + left + x) * 4;
      for (let c = 0; c < 3; c++) {  // float32 steps, as NumPy: x / 255, (x - mean) / std
        crop[4 * p + c] = rgba[q + c];
        tensor[c * plane + p] = f(f(f(rgba[q + c] / 255) - mean[c]) / std[c]);
      }
      crop[4 * p + 3] = 255;
    }
  }
  const pixels = canvasOf(size, size);
  pixels.getContext("2d").putImageData(new ImageData(crop, size, size), 0, 0);
  return { tensor, pixels };
}

function softmax(values) {
  const max = Math.max(...values);
  const e = values.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

// Run the model on one preprocessed image -> {probs, runMs}.
async function run(tensor) {
  const size = state.size, plane = 3 * size * size;
  const data = new Float32Array(state.batch * plane);  // a static batch: pad with zeros
  data.set(tensor);
  const input = new ort.Tensor("float32", data, [state.batch, 3, size, size]);
  const started = performance.now();
  const outputs = await state.session.run({ [state.inputName]: input });
  const runMs = performance.now() - started;
  const out = outputs[state.session.outputNames[0]].data;
  const classes = state.card.classes.length;
  const raw = Array.from(out.slice(0, classes), Number);
  const kind = state.card.artifact.output.kind;
  const probs = kind === "logits" ? softmax(raw) : raw.map((v) => v / raw.reduce((a, b) => a + b));
  return { probs, runMs };
}

// The page's hook (also used by skinedge.export.web.run_in_browser): classify a URL, data URL
// or Blob -> {probs (card.classes order), runMs (model), totalMs (decode + preprocess + model)}.
async function classify(src) {
  await window.skinedgeReady;
  const started = performance.now();
  const img = await loadImage(src);
  const { tensor, pixels } = preprocess(img);
  const { probs, runMs } = await run(tensor);
  return { probs, runMs, totalMs: performance.now() - started, pixels };
}

function show(result) {
  const card = state.card;
  const preview = document.getElementById("input");
  preview.width = preview.height = state.size;
  preview.getContext("2d").drawImage(result.pixels, 0, 0);
  document.getElementById("preview").hidden = false;
  const list = document.getElementById("results");
  list.replaceChildren();
  const order = result.probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  for (const [p, i] of order) {
    const code = card.classes[i];
    const li = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.textContent = card.class_names[code] || code;
    const value = document.createElement("span");
    value.textContent = `${(100 * p).toFixed(1)} %`;
    row.append(name, value);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    li.append(row, bar);
    list.append(li);
  }
  status(`Classified on this device in ${result.totalMs.toFixed(0)} ms ` +
         `(model ${result.runMs.toFixed(0)} ms). Not a diagnosis.`);
}

function status(text) {
  document.getElementById("status").textContent = text;
}

async function start() {
  const response = await fetch("model.card.json");
  const card = await response.json();
  state.card = card;
  state.size = card.preprocess.input_size;
  state.batch = card.artifact.input.shape[0] || 1;
  ort.env.wasm.wasmPaths = new URL(".", location.href).href;  // the files beside this page
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  state.session = await ort.InferenceSession.create("model.onnx", {
    executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  state.inputName = state.session.inputNames[0];
  document.getElementById("about").textContent =
    `${card.architecture} (${card.artifact.precision}), ${card.classes.length} classes, ` +
    `input ${state.size} px; ONNX Runtime Web, WebAssembly, ${ort.env.wasm.numThreads} thread(s). ` +
    card.intended_use;
  status("Ready: take or choose a photo.");
}

window.skinedgeReady = start();
window.skinedgeReady.catch((error) => status(`The model could not load: ${error.message}`));
window.skinedgeClassify = async (src) => {
  const { probs, runMs, totalMs } = await classify(src);
  return { probs, runMs, totalMs };
};

document.getElementById("photo").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  status("Classifying…");
  try {
    show(await classify(file));
  } catch (error) {
    status(`Could not classify this photo: ${error.message}`);
  }
});

if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("sw.js").catch(() => {});  // offline use after a first visit
}
