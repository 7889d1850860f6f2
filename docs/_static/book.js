// A figure in a chapter opens at full size when clicked (the page shows it at the column's width).
document.addEventListener("DOMContentLoaded", () => {
  for (const img of document.querySelectorAll(".cell_output img")) {
    if (img.closest("a")) continue;
    const link = document.createElement("a");
    link.href = img.src;
    link.target = "_blank";
    link.title = "open the figure at full size";
    img.replaceWith(link);
    link.appendChild(img);
  }
});
