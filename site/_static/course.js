// Code cells start open; each folds on its own ("Hide code"), and one button folds them all.
document.addEventListener("DOMContentLoaded", function () {
  var cells = document.querySelectorAll("details.above-input");
  var article = document.querySelector("article.bd-article");
  if (!cells.length || !article) return;
  cells.forEach(function (cell) { cell.open = true; });
  var button = document.createElement("button");
  button.type = "button";
  button.className = "ddpm-code-toggle";
  button.textContent = "Hide all code";
  button.addEventListener("click", function () {
    var open = button.textContent === "Show all code";
    cells.forEach(function (cell) { cell.open = open; });
    button.textContent = open ? "Hide all code" : "Show all code";
  });
  article.insertBefore(button, article.firstChild);
});
