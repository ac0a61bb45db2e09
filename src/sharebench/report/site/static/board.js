// Sorting and filtering of a board's ranked table: a click on a column header sorts by it (again: the other way),
// typing in the board's search field keeps the rows that contain the text. Numbers are read from the start of a
// cell ("1.9030 ± 0.0144", "742,784", "3.662e+12"); cells without one sort last.
"use strict";

function cellValue(row, column, type) {
  const text = row.cells[column].textContent.trim();
  if (type !== "number") return text.toLowerCase();
  const number = parseFloat(text.replace(/,/g, "").replace("\u2212", "-"));
  return Number.isNaN(number) ? null : number;
}

function sortBy(table, column, type, ascending) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, column, type), y = cellValue(b, column, type);
    if (x === null || y === null) return (x === null) - (y === null);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  rows.forEach((row) => body.appendChild(row));
}

document.querySelectorAll("table.ranked").forEach((table) => {
  table.querySelectorAll("thead th").forEach((header, column) => {
    header.addEventListener("click", () => {
      const ascending = header.dataset.order !== "ascending";
      table.querySelectorAll("thead th").forEach((other) => delete other.dataset.order);
      header.dataset.order = ascending ? "ascending" : "descending";
      sortBy(table, column, header.dataset.type, ascending);
    });
  });
  const filter = table.parentElement.querySelector("input.filter");
  if (filter) {
    filter.addEventListener("input", () => {
      const wanted = filter.value.trim().toLowerCase();
      Array.from(table.tBodies[0].rows).forEach((row) => {
        row.hidden = wanted !== "" && !row.textContent.toLowerCase().includes(wanted);
      });
    });
  }
});

// A plot drawn while the page was still being read took the width its grid had then: fit each to its cell now.
if (window.Plotly) {
  document.querySelectorAll(".plotly-graph-div").forEach((plot) => window.Plotly.Plots.resize(plot));
}
